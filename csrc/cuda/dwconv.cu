// CUDA kernels of the fused depthwise conv + BN + GELU that also emits each channel's average and
// max (eval: BN as a folded affine; train: batch statistics; backward of both).
//
// The ops work on channels_last (B x H x W x C) buffers: neighbouring threads take neighbouring
// channels, so each of the k*k taps is a coalesced load. Other inputs are copied to
// channels_last on entry (one transpose, instead of k*k strided reads per element), and results
// are returned channels_last when the input was, else contiguous.
#include "cuda/dwconv.cuh"

#include <ATen/ops/flip.h>
#include <ATen/ops/full.h>
#include <ATen/ops/rsqrt.h>

#include <tuple>

#include "cuda/activations.cuh"
#include "cuda/packs.cuh"
#include "dwconv_bn_gelu_checks.h"
#include "dwconv_weights.h"

namespace hdkd::cuda {
namespace {

// conv = conv_kxk(x, w) (no bias) into a dense B x H x W x C buffer: thread (chunk of
// kChunk pixel rows t = b * H * W + p, channel c) walks its chunk in order. With pmean and pm2
// (chunks x C; float32 conv only) it also takes the chunk's mean and sum of squared deviations,
// re-reading its own values (two-pass within the chunk, no cancellation).
template <int K, typename in_t, typename out_t>
void conv_chunks(const in_t* xp, const Layout& lx, const float* wt, out_t* conv, float* pmean,
                 float* pm2) {
  const int64_t C = lx.C, N = lx.B * lx.P(), chunks = (N + kChunk - 1) / kChunk;
  const Divisor by_c(C);
  for_each_index(chunks * C, [=] HDKD_HOST_DEVICE(int64_t i) {
    int64_t chunk, c;
    by_c.divmod(i, chunk, c);
    const int64_t t0 = chunk * kChunk, t1 = t0 + kChunk < N ? t0 + kChunk : N;
    const DwconvTaps<K, in_t> taps(wt, c, lx);
    PixelWalk at(t0, lx);
    float sum = 0.f;
    for (int64_t t = t0; t < t1; ++t, at.next(lx)) {
      const float v = taps(xp + at.b * lx.sb + c * lx.sc, at.y, at.x);
      conv[t * C + c] = static_cast<out_t>(v);
      sum += v;
    }
    if (!pmean) return;
    const float m = sum / float(t1 - t0);
    float m2 = 0.f;
    for (int64_t t = t0; t < t1; ++t) {
      const float d = static_cast<float>(conv[t * C + c]) - m;
      m2 += d * d;
    }
    pmean[i] = m;
    pm2[i] = m2;
  });
}

// conv_chunks of x (in_t data) for w's kernel size.
template <typename in_t, typename out_t>
void conv_nhwc(const Tensor& x, const Tensor& w, out_t* conv, float* pmean = nullptr,
               float* pm2 = nullptr) {
  const Tensor wt = tap_major(w);
  const Layout lx = layout_of(x);
  const in_t* xp = x.data_ptr<in_t>();
  with_kernel_size(w.size(-1), [&](auto K) {
    conv_chunks<decltype(K)::value>(xp, lx, wt.data_ptr<float>(), conv, pmean, pm2);
  });
}

// GELU(conv * scale + shift) of one (b, c) plane, written to y (as stored) and returned, for
// channel_stats_of.
template <int K, typename scalar_t>
struct DwconvGeluRow {
  DwconvTaps<K, scalar_t> taps;
  const scalar_t* x;  // the planes of x and y
  scalar_t* y;
  int64_t ysh, ysw;
  float scale, shift;
  HDKD_HOST_DEVICE float operator()(int64_t, int64_t py, int64_t px) const {
    const scalar_t v = static_cast<scalar_t>(gelu(taps(x, py, px) * scale + shift));
    y[py * ysh + px * ysw] = v;
    return static_cast<float>(v);
  }
};

template <int K, typename scalar_t>
ChannelStats gelu_stats_of(const scalar_t* xp, const Layout& lx, const float* wt,
                           const float* scale, const float* shift, scalar_t* yp, const Layout& ly,
                           const Tensor& like) {
  // y written by the statistics pass: each (b, c, p) has exactly one owner
  return channel_stats_of(lx.B, lx.C, lx.H, lx.W, [=] HDKD_HOST_DEVICE(int64_t b, int64_t c) {
    return DwconvGeluRow<K, scalar_t>{DwconvTaps<K, scalar_t>(wt, c, lx),
                                      xp + b * lx.sb + c * lx.sc, yp + b * ly.sb + c * ly.sc,
                                      ly.sh, ly.sw, scale ? scale[c] : 1.f, shift[c]};
  }, like);
}

// The K x K conv of 8 neighbouring channels at (y, x) of a dense channels_last plane (x's data at
// (b, c0)) into acc, in for_each_tap's order (as DwconvTaps): a 16-byte load of x and two of the
// weights (wt at channel c0, float32 K*K x C) per tap.
template <int K, typename scalar_t>
HDKD_HOST_DEVICE void conv_pack(const scalar_t* plane, const float* wt, const Layout& lx,
                                int64_t y, int64_t x, float (&acc)[kPack]) {
  constexpr int R = K / 2;
#pragma unroll
  for (int k = 0; k < kPack; ++k) acc[k] = 0.f;
  for_each_tap<K>(y, x, lx.H, lx.W, [&](int ky, int kx) {
    float v[kPack], w[kPack];
    load_pack(plane + (y + ky - R) * lx.sh + (x + kx - R) * lx.sw, v);
    load_pack(wt + (ky * K + kx) * lx.C, w);
#pragma unroll
    for (int k = 0; k < kPack; ++k) acc[k] += v[k] * w[k];
  });
}

// gelu_stats_of with 8 channels per thread, for tensors that pass packs_of_8: thread (chunk of
// kChunk pixels, b, 8 channels); per channel the same arithmetic in the same order.
template <int K, typename scalar_t>
ChannelStats gelu_stats_packed(const scalar_t* xp, const Layout& lx, const float* wt,
                               const float* scale, const float* shift, scalar_t* yp,
                               const Layout& ly, const Tensor& like) {
  const int64_t B = lx.B, C = lx.C, P = lx.P(), m = B * C;
  const int64_t chunks = std::max<int64_t>((P + kChunk - 1) / kChunk, 1);
  Tensor partial = at::empty({3, chunks * m}, like.options().dtype(at::kFloat));
  float* ps = partial.data_ptr<float>();
  float *pm = ps + chunks * m, *pt = pm + chunks * m;
  const Divisor by_packs(m / kPack), by_channel_packs(C / kPack);
  for_each_index(chunks * m / kPack, [=] HDKD_HOST_DEVICE(int64_t v) {
    int64_t chunk, jp, b, cp, y, x;
    by_packs.divmod(v, chunk, jp);
    by_channel_packs.divmod(jp, b, cp);
    const int64_t c0 = cp * kPack, p0 = chunk * kChunk, p1 = p0 + kChunk < P ? p0 + kChunk : P;
    lx.by_w.divmod(p0, y, x);
    float sc[kPack], sh[kPack];
    load_pack(shift + c0, sh);
    if (scale) {
      load_pack(scale + c0, sc);
    } else {
#pragma unroll
      for (int k = 0; k < kPack; ++k) sc[k] = 1.f;
    }
    const scalar_t* xplane = xp + computed_once(b) * lx.sb + c0;
    scalar_t* yplane = yp + b * ly.sb + c0;
    SumMaxTies s[kPack];
    for (int64_t p = p0; p < p1; ++p) {
      float out[kPack];
      conv_pack<K>(xplane, wt + c0, lx, y, x, out);
#pragma unroll
      for (int k = 0; k < kPack; ++k)
        out[k] = static_cast<float>(static_cast<scalar_t>(gelu(out[k] * sc[k] + sh[k])));
      store_pack(yplane + y * ly.sh + x * ly.sw, out);
#pragma unroll
      for (int k = 0; k < kPack; ++k) s[k].add(out[k]);
      if (++x == lx.W) {
        x = 0;
        ++y;
      }
    }
    const int64_t i0 = chunk * m + jp * kPack;
#pragma unroll
    for (int k = 0; k < kPack; ++k) {
      ps[i0 + k] = s[k].sum;
      pm[i0 + k] = s[k].max;
      pt[i0 + k] = s[k].ties;
    }
  });
  return combine_channel_stats(partial, chunks, B, C);
}

// x has at least one pixel (checked beside the shared checks).
void check_pixels(const char* op, const Tensor& x) {
  TORCH_CHECK(x.size(2) * x.size(3) > 0, op, ": expected x with at least one pixel, got shape ",
              x.sizes());
}

Tensor as_float(const Tensor& t) { return t.to(at::kFloat).contiguous(); }
Tensor nhwc(const Tensor& t) { return t.contiguous(at::MemoryFormat::ChannelsLast); }
// A result computed channels_last, in the memory format the op returns for input x_in.
Tensor in_format_of(const Tensor& r, const Tensor& x_in) {
  return wants_channels_last(x_in) ? r : r.contiguous();
}

// Statistics as the ops return them: avg and max in the input dtype, ties float32.
std::tuple<Tensor, Tensor, Tensor> stats_outputs(const ChannelStats& s, const Tensor& x) {
  const double P = double(x.size(2) * x.size(3));
  return {s.sum.div(P).to(x.scalar_type()), s.max.to(x.scalar_type()), s.ties};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> dwconv_bn_gelu_eval(const Tensor& x_in,
                                                               const Tensor& w,
                                                               const Tensor& scale,
                                                               const Tensor& shift) {
  const char* op = "hdkd::dwconv_bn_gelu_eval";
  check_dwconv_bn_gelu_eval(op, x_in, w, scale, shift);
  check_pixels(op, x_in);
  const OpScope scope(x_in);
  const Tensor x = nhwc(x_in);
  Tensor y = at::empty(x.sizes(), x.options(), at::MemoryFormat::ChannelsLast);
  const ChannelStats stats = dwconv_gelu_and_stats(x, w, as_float(scale), as_float(shift), y);
  auto [avg, mx, ties] = stats_outputs(stats, x);
  return {in_format_of(y, x_in), avg, mx, ties};
}

// conv = conv_kxk(x, w) into cp (dense float32 B x H x W x C), and its per-channel batch mean
// and biased variance, in one pass over x (conv_chunks' per-chunk moments, combined with Chan's
// formula, var = (sum M2_i + sum n_i (mean_i - mean)^2) / N).
std::tuple<Tensor, Tensor> conv_and_moments(const Tensor& x, const Tensor& w, float* cp) {
  const int64_t C = x.size(1), P = x.size(2) * x.size(3), N = x.size(0) * P;
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  const auto f32 = x.options().dtype(at::kFloat);
  Tensor moments = at::empty({2, chunks, C}, f32);
  float* pmean = moments.data_ptr<float>();
  float* pm2 = pmean + chunks * C;
  HDKD_DISPATCH(x.scalar_type(), "hdkd_dwconv_moments",
                [&] { conv_nhwc<scalar_t>(x, w, cp, pmean, pm2); });
  Tensor n = at::full({chunks, 1}, double(kChunk), f32);
  n.select(0, chunks - 1).fill_(double(N - (chunks - 1) * kChunk));
  const Tensor chunk_mean = moments.select(0, 0), mean = chunk_mean.mul(n).sum(0).div_(double(N));
  const Tensor var = moments.select(0, 1).sum(0)
                         .add_(chunk_mean.sub(mean).square_().mul_(n).sum(0))
                         .div_(double(N));
  return {mean, var};
}

// GELU(conv * scale + shift) of one (b, c) plane of the dense float32 conv, written to y (dense
// like conv) as stored, for channel_stats_of.
template <typename scalar_t>
struct TrainGeluRow {
  const float* conv;  // both at (b, c, pixel 0); pixels C apart
  scalar_t* y;
  int64_t C;
  float scale, shift;
  HDKD_HOST_DEVICE float operator()(int64_t p, int64_t, int64_t) const {
    const scalar_t v = static_cast<scalar_t>(gelu(conv[p * C] * scale + shift));
    y[p * C] = v;
    return static_cast<float>(v);
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> dwconv_bn_gelu_train(
    const Tensor& x_in, const Tensor& w, const Tensor& gamma, const Tensor& beta, double eps) {
  const char* op = "hdkd::dwconv_bn_gelu_train";
  check_dwconv_bn_gelu_train(op, x_in, w, gamma, beta);
  check_pixels(op, x_in);
  const OpScope scope(x_in);
  const Tensor x = nhwc(x_in);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), P = H * W;
  Tensor conv = empty_nhwc_float(x, B, C, H, W);
  float* cp = conv.data_ptr<float>();
  auto [mean, var] = conv_and_moments(x, w, cp);
  const Tensor scale = as_float(gamma).mul(at::rsqrt(var.add(eps))).contiguous();
  const Tensor shift = as_float(beta).sub(mean.mul(scale)).contiguous();
  const float *scp = scale.data_ptr<float>(), *shp = shift.data_ptr<float>();
  Tensor y = at::empty(x.sizes(), x.options(), at::MemoryFormat::ChannelsLast);
  ChannelStats stats;
  HDKD_DISPATCH(x.scalar_type(), "hdkd_dwconv_train_y", [&] {
    scalar_t* yp = y.data_ptr<scalar_t>();
    // y written by the statistics pass: each (b, c, p) has exactly one owner
    stats = channel_stats_of(B, C, H, W, [=] HDKD_HOST_DEVICE(int64_t b, int64_t c) {
      const int64_t plane = b * P * C + c;
      return TrainGeluRow<scalar_t>{cp + plane, yp + plane, C, scp[c], shp[c]};
    }, x);
  });
  auto [avg, mx, ties] = stats_outputs(stats, x);
  return {in_format_of(y, x_in), avg, mx, ties, conv, mean, var};
}

// Partial sums of the weight gradient: thread (chunk of kChunk pixels, channel c) keeps the K*K
// taps in registers, walks its pixels in order and reads dz once per pixel;
// partial[(chunk * K*K + tap) * C + c]. x, dz: dense B x H x W x C.
template <int K, typename scalar_t>
void dw_grad_partials(const scalar_t* xp, const Layout& lx, const float* dz, float* partial,
                      int64_t chunks) {
  constexpr int R = K / 2;
  const int64_t C = lx.C, H = lx.H, W = lx.W, N = lx.B * lx.P();
  const Divisor by_c(C);
  for_each_index(chunks * C, [=] HDKD_HOST_DEVICE(int64_t i) {
    int64_t ch, c;
    by_c.divmod(i, ch, c);
    const int64_t t0 = ch * kChunk, t1 = t0 + kChunk < N ? t0 + kChunk : N;
    float acc[K * K];
#pragma unroll
    for (int q = 0; q < K * K; ++q) acc[q] = 0.f;
    PixelWalk at(t0, lx);
    for (int64_t t = t0; t < t1; ++t, at.next(lx)) {
      const int64_t b = at.b, y = at.y, x = at.x;
      const float g = dz[t * C + c];
      for_each_tap<K>(y, x, H, W, [&](int ky, int kx) {
        const int64_t iy = y + ky - R, ix = x + kx - R;
        acc[ky * K + kx] += g * static_cast<float>(xp[((b * H + iy) * W + ix) * C + c]);
      });
    }
#pragma unroll
    for (int q = 0; q < K * K; ++q) partial[(ch * K * K + q) * C + c] = acc[q];
  });
}

// dw as float32 k*k x C.
Tensor dw_grad(const Tensor& x, const float* dz, int64_t k) {
  const Layout lx = layout_of(x);
  const int64_t C = lx.C, taps = k * k, chunks = (lx.B * lx.P() + kChunk - 1) / kChunk;
  Tensor partial_t = at::empty({chunks * taps * C}, x.options().dtype(at::kFloat));
  float* partial = partial_t.data_ptr<float>();
  HDKD_DISPATCH(x.scalar_type(), "hdkd_dwconv_weight_grad", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    with_kernel_size(k, [&](auto K) {
      dw_grad_partials<decltype(K)::value>(xp, lx, dz, partial, chunks);
    });
  });
  return sum_terms(taps * C, chunks, [=] HDKD_HOST_DEVICE(int64_t j, int64_t ch) {
    return partial[ch * taps * C + j];
  }, x).view({taps, C});
}

// dz = (gy + gavg / P + [y == max] gmax / ties) * GELU'(conv * scale + shift); then
// eval: dconv = dz * scale, dscale = sum dz * conv, dshift = sum dz;
// train: dconv = scale * (dz - mean(dz) - xhat * mean(dz * xhat)), dgamma = sum dz * xhat,
//        dbeta = sum dz, xhat = (conv - mean) * invstd.
DwconvBnGeluBackwardResult dwconv_bn_gelu_backward(const DwconvBnGeluBackwardArgs& a) {
  const char* op = "hdkd::dwconv_bn_gelu_backward";
  const bool train = check_dwconv_bn_gelu_backward(op, a);
  check_pixels(op, a.x);
  const int64_t B = a.x.size(0), C = a.x.size(1), H = a.x.size(2), W = a.x.size(3);
  const int64_t P = H * W, N = B * P;
  const OpScope scope(a.x);
  const Tensor x = nhwc(a.x);
  Tensor conv;
  if (given(a.conv)) {
    conv = nhwc(a.conv->to(at::kFloat));
  } else {
    conv = empty_nhwc_float(x, B, C, H, W);
    HDKD_DISPATCH(x.scalar_type(), "hdkd_dwconv_conv",
                  [&] { conv_nhwc<scalar_t>(x, a.w, conv.data_ptr<float>()); });
  }
  const float* cp = conv.data_ptr<float>();
  const Tensor scale = as_float(a.scale), shift = as_float(a.shift);
  const Tensor gavg = given(a.grad_avg) ? as_float(*a.grad_avg) : Tensor();
  const Tensor gmax = given(a.grad_max) ? as_float(*a.grad_max) : Tensor();
  const Tensor ymax = as_float(a.max), ties = as_float(a.ties);
  const float *scp = scale.data_ptr<float>(), *shp = shift.data_ptr<float>();
  const float* gap = gavg.defined() ? gavg.data_ptr<float>() : nullptr;
  const float* gmp = gmax.defined() ? gmax.data_ptr<float>() : nullptr;
  const float *ymp = ymax.data_ptr<float>(), *tp = ties.data_ptr<float>();
  const float inv_p = 1.f / float(P);

  // dz, then dconv in place: a dense float32 B x P x C buffer, like conv. One pass writes dz and
  // its per-channel sums: thread (chunk of kChunk pixels, channel c) walks its chunk, and the
  // partial sums are then added in a fixed order (deterministic).
  Tensor dz_t = empty_nhwc_float(x, B, C, H, W);
  float* dz = dz_t.data_ptr<float>();
  const Tensor gy = given(a.grad_y) ? nhwc(*a.grad_y) : Tensor();
  const Tensor y = gmp ? nhwc(a.y) : Tensor();  // where the max's gradient goes
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  const Divisor by_c(C), by_p(P);
  Tensor partial = at::empty({2, chunks * C}, x.options().dtype(at::kFloat));
  float* psum = partial.data_ptr<float>();
  float* psumc = psum + chunks * C;
  // train: sum dz * (conv - mean) accumulated centred; sum dz * conv - mean * sum dz cancels
  // catastrophically when |mean| >> std
  const Tensor centre = train ? as_float(*a.mean) : Tensor();
  const float* centrep = train ? centre.data_ptr<float>() : nullptr;
  HDKD_DISPATCH(x.scalar_type(), "hdkd_dwconv_backward_dz", [&] {
    const scalar_t* gyp = gy.defined() ? gy.data_ptr<scalar_t>() : nullptr;
    const scalar_t* yp = y.defined() ? y.data_ptr<scalar_t>() : nullptr;
    for_each_index(chunks * C, [=] HDKD_HOST_DEVICE(int64_t i) {
      int64_t chunk, c;
      by_c.divmod(i, chunk, c);
      const int64_t t0 = chunk * kChunk, t1 = t0 + kChunk < N ? t0 + kChunk : N;
      float sum = 0.f, sumc = 0.f;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t j = by_p.div(t) * C + c, e = t * C + c;
        float base = gyp ? static_cast<float>(gyp[e]) : 0.f;
        if (gap) base += gap[j] * inv_p;
        if (yp && static_cast<float>(yp[e]) == ymp[j]) base += gmp[j] / tp[j];
        const float g = base * gelu_grad(cp[e] * scp[c] + shp[c]);
        dz[e] = g;
        sum += g;
        sumc += g * (centrep ? cp[e] - centrep[c] : cp[e]);
      }
      psum[i] = sum;
      psumc[i] = sumc;
    });
  });
  const Tensor dsum = sum_terms(C, chunks, [=] HDKD_HOST_DEVICE(int64_t c, int64_t ch) {
    return psum[ch * C + c];
  }, x);
  const Tensor dsumc = sum_terms(C, chunks, [=] HDKD_HOST_DEVICE(int64_t c, int64_t ch) {
    return psumc[ch * C + c];
  }, x);
  Tensor dscale;
  if (train) {
    const Tensor mean = as_float(*a.mean), invstd = as_float(*a.invstd);
    dscale = dsumc.mul(invstd);  // dgamma = sum dz * xhat
    const Tensor k1 = scale.mul(invstd).mul_(dscale).div_(double(N)).contiguous();
    const Tensor c0 = scale.mul(dsum).div_(double(N)).contiguous();
    const float *k1p = k1.data_ptr<float>(), *c0p = c0.data_ptr<float>();
    const float* mp = mean.data_ptr<float>();
    for_each_index(N * C, [=] HDKD_HOST_DEVICE(int64_t i) {
      const int64_t c = by_c.mod(i);
      dz[i] = dz[i] * scp[c] - c0p[c] - k1p[c] * (cp[i] - mp[c]);
    });
  } else {
    dscale = dsumc;
    for_each_index(N * C, [=] HDKD_HOST_DEVICE(int64_t i) { dz[i] *= scp[by_c.mod(i)]; });
  }

  // dx: the conv of dconv with the spatially flipped kernel.
  Tensor dx = at::empty(x.sizes(), x.options(), at::MemoryFormat::ChannelsLast);
  HDKD_DISPATCH(x.scalar_type(), "hdkd_dwconv_backward_dx", [&] {
    conv_nhwc<float>(dz_t, a.w.flip({2, 3}), dx.data_ptr<scalar_t>());
  });
  const int64_t k = a.w.size(-1);
  // contiguous, as its fake kernel returns it
  const Tensor dw = dw_grad(x, dz, k).t().contiguous().view({C, 1, k, k});
  return {in_format_of(dx, a.x), dw.to(a.w.scalar_type()), dscale.to(a.scale.scalar_type()),
          dsum.to(a.shift.scalar_type())};
}

}  // namespace

ChannelStats dwconv_gelu_and_stats(const Tensor& x, const Tensor& w, const Tensor& scale,
                                   const Tensor& shift, const Tensor& y) {
  TORCH_INTERNAL_ASSERT(y.scalar_type() == x.scalar_type());
  const Tensor wt = tap_major(w);
  const Layout lx = layout_of(x), ly = layout_of(y);
  const float* sp = scale.defined() ? scale.data_ptr<float>() : nullptr;
  const bool packed = packs_of_8({x, y}, {wt, scale, shift});
  ChannelStats out;
  HDKD_DISPATCH(x.scalar_type(), "hdkd_dwconv_gelu_and_stats", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const float *wp = wt.data_ptr<float>(), *hp = shift.data_ptr<float>();
    with_kernel_size(w.size(-1), [&](auto K) {
      constexpr int k = decltype(K)::value;
      out = packed ? gelu_stats_packed<k>(xp, lx, wp, sp, hp, yp, ly, x)
                   : gelu_stats_of<k>(xp, lx, wp, sp, hp, yp, ly, x);
    });
  });
  return out;
}

HDKD_CUDA_IMPL(m) {
  m.impl("dwconv_bn_gelu_eval", &dwconv_bn_gelu_eval);
  m.impl("dwconv_bn_gelu_train", &dwconv_bn_gelu_train);
  m.impl("dwconv_bn_gelu_backward", &dwconv_bn_gelu_backward_op<&dwconv_bn_gelu_backward>);
}

}  // namespace hdkd::cuda
