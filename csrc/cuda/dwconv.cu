// CUDA kernels of the fused depthwise conv + BN + GELU that also emits each channel's average and
// max (eval: BN as a folded affine; train: batch statistics; backward of both).
#include "cuda/dwconv.cuh"

#include <ATen/ops/rsqrt.h>

#include <tuple>

namespace hdkd::cuda {
namespace {

// w (C x 1 x k x k, any dtype) as float32 C x k x k.
Tensor taps_of(const Tensor& w) {
  return w.to(at::kFloat).reshape({w.size(0), w.size(2), w.size(3)}).contiguous();
}

template <typename in_t>
DwconvValue<in_t> dwconv_value(const Tensor& x, const Tensor& wt, const Tensor& scale,
                               const Tensor& shift, bool apply_gelu) {
  return {x.data_ptr<in_t>(), layout_of(x), wt.data_ptr<float>(), wt.size(-1),
          scale.defined() ? scale.data_ptr<float>() : nullptr,
          shift.defined() ? shift.data_ptr<float>() : nullptr, apply_gelu};
}

template <typename in_t, typename out_t>
void launch_dwconv(const DwconvValue<in_t>& value, const Tensor& y) {
  const Layout ly = layout_of(y);
  out_t* dst = y.data_ptr<out_t>();
  for_each_index(ly.B * ly.C * ly.P(), [=] HDKD_HD(int64_t i) {
    int64_t b, c, p;
    ly.unravel(i, b, c, p);
    dst[ly.at(b, c, p)] = static_cast<out_t>(value(b, c, p));
  });
}

void check_dw(const char* op, const Tensor& x, const Tensor& w) {
  check_4d(op, "x", x, x);
  check_4d(op, "weight", w, x);
  const int64_t C = x.size(1), k = w.size(-1);
  TORCH_CHECK(w.size(0) == C && w.size(1) == 1 && w.size(2) == k && k % 2 == 1, op,
              ": expected weight of shape (", C, ", 1, k, k) with k odd, got ", w.sizes());
  TORCH_CHECK(x.size(2) * x.size(3) > 0, op, ": expected x with at least one pixel, got shape ",
              x.sizes());
}

Tensor as_float(const Tensor& t) { return t.to(at::kFloat).contiguous(); }

// Statistics as the ops return them: avg and max in y's dtype, argmax int64.
std::tuple<Tensor, Tensor, Tensor> stats_outputs(const ChannelStats& s, const Tensor& y) {
  const double P = double(y.size(2) * y.size(3));
  return {s.sum.div(P).to(y.scalar_type()), s.max.to(y.scalar_type()), s.argmax};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> dwconv_bn_gelu_eval(const Tensor& x, const Tensor& w,
                                                               const Tensor& scale,
                                                               const Tensor& shift) {
  const char* op = "hdkd::dwconv_bn_gelu_eval";
  check_dw(op, x, w);
  check_channel_vec(op, "scale", scale, x.size(1), x);
  check_channel_vec(op, "shift", shift, x.size(1), x);
  const OpScope scope(x);
  Tensor y = empty_like_input(x, x.sizes(), x.scalar_type());
  const Tensor sc = as_float(scale), sh = as_float(shift);
  dwconv(x, w, sc, sh, true, y);
  auto [avg, mx, arg] = stats_outputs(dwconv_stats(x, w, sc, sh, true), y);
  return {y, avg, mx, arg};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> dwconv_bn_gelu_train(
    const Tensor& x, const Tensor& w, const Tensor& gamma, const Tensor& beta, double eps) {
  const char* op = "hdkd::dwconv_bn_gelu_train";
  check_dw(op, x, w);
  check_channel_vec(op, "gamma", gamma, x.size(1), x);
  check_channel_vec(op, "beta", beta, x.size(1), x);
  const OpScope scope(x);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), N = B * H * W;
  Tensor conv = empty_nhwc_float(x, B, C, H, W);
  dwconv(x, w, Tensor(), Tensor(), false, conv);
  const float* cp = conv.data_ptr<float>();
  const Tensor mean = sum_terms(C, N, [=] HDKD_HD(int64_t c, int64_t t) {
    return cp[t * C + c];
  }, x).div_(double(N));
  const float* mp = mean.data_ptr<float>();
  const Tensor var = sum_terms(C, N, [=] HDKD_HD(int64_t c, int64_t t) {
    const float d = cp[t * C + c] - mp[c];
    return d * d;
  }, x).div_(double(N));  // two-pass: no cancellation
  const Tensor scale = as_float(gamma).mul(at::rsqrt(var.add(eps))).contiguous();
  const Tensor shift = as_float(beta).sub(mean.mul(scale)).contiguous();
  Tensor y = empty_like_input(x, x.sizes(), x.scalar_type());
  const Layout ly = layout_of(y);
  const float *scp = scale.data_ptr<float>(), *shp = shift.data_ptr<float>();
  HDKD_DISPATCH(x.scalar_type(), "hdkd_dwconv_train_y", [&] {
    scalar_t* yp = y.data_ptr<scalar_t>();
    for_each_index(N * C, [=] HDKD_HD(int64_t i) {
      int64_t b, c, p;
      ly.unravel(i, b, c, p);
      yp[ly.at(b, c, p)] =
          static_cast<scalar_t>(gelu(cp[(b * H * W + p) * C + c] * scp[c] + shp[c]));
    });
  });
  const ChannelStats stats = channel_stats_of(B, C, H * W, [=] HDKD_HD(int64_t b, int64_t c,
                                                                      int64_t p) {
    return gelu(cp[(b * H * W + p) * C + c] * scp[c] + shp[c]);
  }, x);
  auto [avg, mx, arg] = stats_outputs(stats, y);
  return {y, avg, mx, arg, conv, mean, var};
}

// dz = (gy + gavg / P + [p == argmax] gmax) * GELU'(conv * scale + shift); then
// eval: dconv = dz * scale, dscale = sum dz * conv, dshift = sum dz;
// train: dconv = scale * (dz - mean(dz) - xhat * mean(dz * xhat)), dgamma = sum dz * xhat,
//        dbeta = sum dz, xhat = (conv - mean) * invstd.
std::tuple<Tensor, Tensor, Tensor, Tensor> dwconv_bn_gelu_backward(
    const std::optional<Tensor>& grad_y, const std::optional<Tensor>& grad_avg,
    const std::optional<Tensor>& grad_max, const Tensor& x, const Tensor& w,
    const std::optional<Tensor>& conv_in, const Tensor& scale_in, const Tensor& shift_in,
    const Tensor& argmax_in, const std::optional<Tensor>& mean_in,
    const std::optional<Tensor>& invstd_in) {
  const char* op = "hdkd::dwconv_bn_gelu_backward";
  check_dw(op, x, w);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), P = H * W, N = B * P;
  check_channel_vec(op, "scale", scale_in, C, x);
  check_channel_vec(op, "shift", shift_in, C, x);
  auto given = [](const std::optional<Tensor>& t) { return t.has_value() && t->defined(); };
  const bool train = given(mean_in);
  TORCH_CHECK(train == given(invstd_in), op,
              ": expected mean and invstd both given (train) or both None (eval)");
  if (given(grad_y))
    TORCH_CHECK(grad_y->sizes() == x.sizes() && grad_y->scalar_type() == x.scalar_type() &&
                    grad_y->device() == x.device(),
                op, ": expected grad_y like x (", x.sizes(), ", ", x.scalar_type(), ")");
  const OpScope scope(x);
  Tensor conv;
  if (given(conv_in)) {
    check_4d(op, "conv", *conv_in, x);
    conv = *conv_in;
  } else {
    conv = empty_nhwc_float(x, B, C, H, W);
    dwconv(x, w, Tensor(), Tensor(), false, conv);
  }
  const Layout lc = layout_of(conv);
  const Tensor conv_f = conv.scalar_type() == at::kFloat ? conv : conv.to(at::kFloat);
  const float* cp = conv_f.data_ptr<float>();
  const Tensor scale = as_float(scale_in), shift = as_float(shift_in);
  const Tensor gavg = given(grad_avg) ? as_float(*grad_avg) : Tensor();
  const Tensor gmax = given(grad_max) ? as_float(*grad_max) : Tensor();
  const Tensor argmax = argmax_in.to(at::kLong).contiguous();
  const float *scp = scale.data_ptr<float>(), *shp = shift.data_ptr<float>();
  const float* gap = gavg.defined() ? gavg.data_ptr<float>() : nullptr;
  const float* gmp = gmax.defined() ? gmax.data_ptr<float>() : nullptr;
  const int64_t* amp = argmax.data_ptr<int64_t>();
  const float inv_p = 1.f / float(P);

  // dz, then dconv in place: a dense float32 B x P x C buffer.
  Tensor dz_t = empty_nhwc_float(x, B, C, H, W);
  float* dz = dz_t.data_ptr<float>();
  HDKD_DISPATCH(x.scalar_type(), "hdkd_dwconv_backward_dz", [&] {
    const scalar_t* gyp = given(grad_y) ? grad_y->data_ptr<scalar_t>() : nullptr;
    const Layout lg = given(grad_y) ? layout_of(*grad_y) : lc;
    for_each_index(N * C, [=] HDKD_HD(int64_t i) {
      const int64_t c = i % C, b = i / (P * C), p = (i / C) % P, j = b * C + c;
      float base = gyp ? static_cast<float>(gyp[lg.at(b, c, p)]) : 0.f;
      if (gap) base += gap[j] * inv_p;
      if (gmp && amp[j] == p) base += gmp[j];
      dz[i] = base * gelu_grad(cp[lc.at(b, c, p)] * scp[c] + shp[c]);
    });
  });
  const Tensor dsum = sum_terms(C, N, [=] HDKD_HD(int64_t c, int64_t t) {
    return dz[t * C + c];
  }, x);
  const Tensor dsumc = sum_terms(C, N, [=] HDKD_HD(int64_t c, int64_t t) {
    return dz[t * C + c] * cp[lc.at(t / P, c, t % P)];
  }, x);
  Tensor dscale;
  if (train) {
    const Tensor mean = as_float(*mean_in), invstd = as_float(*invstd_in);
    dscale = dsumc.sub(mean.mul(dsum)).mul_(invstd);  // dgamma = sum dz * xhat
    const Tensor k1 = scale.mul(invstd).mul_(dscale).div_(double(N)).contiguous();
    const Tensor c0 = scale.mul(dsum).div_(double(N)).contiguous();
    const float *k1p = k1.data_ptr<float>(), *c0p = c0.data_ptr<float>();
    const float* mp = mean.data_ptr<float>();
    for_each_index(N * C, [=] HDKD_HD(int64_t i) {
      const int64_t c = i % C, t = i / C;
      dz[i] = dz[i] * scp[c] - c0p[c] - k1p[c] * (cp[lc.at(t / P, c, t % P)] - mp[c]);
    });
  } else {
    dscale = dsumc;
    for_each_index(N * C, [=] HDKD_HD(int64_t i) { dz[i] *= scp[i % C]; });
  }

  // dx: the conv of dconv with the spatially flipped kernel (a gather per pixel).
  Tensor dx = empty_like_input(x, x.sizes(), x.scalar_type());
  const Layout ld = layout_of(dx);
  const Tensor wt = taps_of(w);
  const float* wp = wt.data_ptr<float>();
  const int64_t k = w.size(-1), r = k / 2, taps = k * k;
  HDKD_DISPATCH(x.scalar_type(), "hdkd_dwconv_backward_dx", [&] {
    scalar_t* out = dx.data_ptr<scalar_t>();
    for_each_index(N * C, [=] HDKD_HD(int64_t i) {
      int64_t b, c, p;
      ld.unravel(i, b, c, p);
      const int64_t yy = p / W, xx = p % W;
      float acc = 0.f;
      for (int64_t ky = 0; ky < k; ++ky) {
        const int64_t oy = yy - ky + r;
        if (oy < 0 || oy >= H) continue;
        for (int64_t kx = 0; kx < k; ++kx) {
          const int64_t ox = xx - kx + r;
          if (ox >= 0 && ox < W) acc += dz[((b * H + oy) * W + ox) * C + c] * wp[c * taps + ky * k + kx];
        }
      }
      out[ld.at(b, c, p)] = static_cast<scalar_t>(acc);
    });
  });

  // dw[c, tap] = sum over pixels of dconv * x shifted by the tap; j = tap * C + c (c fastest).
  const Layout lx = layout_of(x);
  Tensor dw;
  HDKD_DISPATCH(x.scalar_type(), "hdkd_dwconv_backward_dw", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    dw = sum_terms(taps * C, N, [=] HDKD_HD(int64_t j, int64_t t) {
      const int64_t c = j % C, tap = j / C, b = t / P;
      const int64_t iy = (t % P) / W + tap / k - r, ix = t % W + tap % k - r;
      if (iy < 0 || iy >= H || ix < 0 || ix >= W) return 0.f;
      return dz[t * C + c] * static_cast<float>(xp[lx.at(b, c, iy, ix)]);
    }, x);
  });
  return {dx, dw.view({taps, C}).t().reshape({C, 1, k, k}).to(w.scalar_type()),
          dscale.to(scale_in.scalar_type()), dsum.to(shift_in.scalar_type())};
}

}  // namespace

void dwconv(const Tensor& x, const Tensor& w, const Tensor& scale, const Tensor& shift,
            bool apply_gelu, const Tensor& y) {
  const Tensor wt = taps_of(w);
  HDKD_DISPATCH(x.scalar_type(), "hdkd_dwconv", [&] {
    const auto value = dwconv_value<scalar_t>(x, wt, scale, shift, apply_gelu);
    if (y.scalar_type() == at::kFloat)
      launch_dwconv<scalar_t, float>(value, y);
    else
      launch_dwconv<scalar_t, scalar_t>(value, y);
  });
}

ChannelStats dwconv_stats(const Tensor& x, const Tensor& w, const Tensor& scale,
                          const Tensor& shift, bool apply_gelu) {
  const Tensor wt = taps_of(w);
  ChannelStats out;
  HDKD_DISPATCH(x.scalar_type(), "hdkd_dwconv_stats", [&] {
    const auto value = dwconv_value<scalar_t>(x, wt, scale, shift, apply_gelu);
    out = channel_stats_of(x.size(0), x.size(1), x.size(2) * x.size(3), value, x);
  });
  return out;
}

HDKD_CUDA_IMPL(m) {
  m.impl("dwconv_bn_gelu_eval", &dwconv_bn_gelu_eval);
  m.impl("dwconv_bn_gelu_train", &dwconv_bn_gelu_train);
  m.impl("dwconv_bn_gelu_backward", &dwconv_bn_gelu_backward);
}

}  // namespace hdkd::cuda
