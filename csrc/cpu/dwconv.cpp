// CPU kernels of the fused depthwise conv + BN + GELU that also emits each channel's average
// and max (eval: BN as a folded affine, one pass; train: batch statistics, three passes).
#include "cpu/dwconv.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>

#include "cpu/activations.h"
#include "cpu/pixel_chunks.h"
#include "dwconv_bn_gelu_checks.h"
#include "dwconv_weights.h"

namespace hdkd::cpu {

using at::Tensor;

namespace {

// The taps of a k x k kernel centred on pixel (y, x) that fall inside the image, in row-major
// order: their number, and for each the offset of its pixel's values (src) and of its weights in
// a tap-major table (tap), both in floats of C channels.
struct PixelTaps {
  int64_t src[kMaxDwKernel * kMaxDwKernel], tap[kMaxDwKernel * kMaxDwKernel];
  int64_t n = 0;
  PixelTaps(int64_t k, Dims d, int64_t y, int64_t x) {
    const int64_t r = k / 2;
    for (int64_t ky = 0; ky < k; ++ky) {
      const int64_t iy = y + ky - r;
      if (iy < 0 || iy >= d.H) continue;
      for (int64_t kx = 0; kx < k; ++kx) {
        const int64_t ix = x + kx - r;
        if (ix < 0 || ix >= d.W) continue;
        src[n] = (iy * d.W + ix) * d.C;
        tap[n++] = (ky * k + kx) * d.C;
      }
    }
  }
};

// Conv output of one pixel for all C channels into acc (C floats), plus bias when given.
inline void conv_pixel(const float* img, const float* wt, const float* bias, int64_t k, Dims d,
                       int64_t y, int64_t x, float* acc) {
  const int64_t C = d.C;
  const PixelTaps in(k, d, y, x);
  int64_t c = 0;
  for (; c + kVec <= C; c += kVec) {
    Vec a = bias ? Vec::loadu(bias + c) : Vec(0.f);
    for (int64_t i = 0; i < in.n; ++i)
      a = at::vec::fmadd(Vec::loadu(img + in.src[i] + c), Vec::loadu(wt + in.tap[i] + c), a);
    a.store(acc + c);
  }
  for (; c < C; ++c) {
    float a = bias ? bias[c] : 0.f;
    for (int64_t i = 0; i < in.n; ++i) a += img[in.src[i] + c] * wt[in.tap[i] + c];
    acc[c] = a;
  }
}

// Conv outputs of the N pixels (y, x .. x + N - 1) of a 3 x 3 kernel, all inside the image's
// border, into out (N consecutive pixels of C), plus bias when given. Each input vector is loaded
// once per kernel row and serves up to 3 of the N outputs (conv_pixel loads 2 vectors per
// multiply-add, which bounds it by the load ports), and the N accumulators are independent
// chains of multiply-adds (8 keep both FMA pipes busy); the taps are summed in conv_pixel's
// order, so the results are the same bits.
template <int N>
inline void conv_row_k3(const float* img, const float* wt, const float* bias, Dims d, int64_t y,
                        int64_t x, float* out) {
  const int64_t C = d.C;
  const float* top = img + ((y - 1) * d.W + (x - 1)) * C;  // input pixel (y - 1, x - 1)
  int64_t c = 0;
  for (; c + kVec <= C; c += kVec) {
    const Vec b = bias ? Vec::loadu(bias + c) : Vec(0.f);
    Vec a[N];
    for (int j = 0; j < N; ++j) a[j] = b;
    for (int64_t ky = 0; ky < 3; ++ky) {
      const float* row = top + ky * d.W * C + c;
      const float* w = wt + ky * 3 * C + c;
      const Vec w0 = Vec::loadu(w), w1 = Vec::loadu(w + C), w2 = Vec::loadu(w + 2 * C);
      Vec left = Vec::loadu(row), mid = Vec::loadu(row + C);
      for (int j = 0; j < N; ++j) {
        const Vec right = Vec::loadu(row + (j + 2) * C);
        a[j] = at::vec::fmadd(right, w2, at::vec::fmadd(mid, w1, at::vec::fmadd(left, w0, a[j])));
        left = mid;
        mid = right;
      }
    }
    for (int j = 0; j < N; ++j) a[j].store(out + j * C + c);
  }
  for (; c < C; ++c)
    for (int64_t j = 0; j < N; ++j) {
      float a = bias ? bias[c] : 0.f;
      for (int64_t ky = 0; ky < 3; ++ky)
        for (int64_t kx = 0; kx < 3; ++kx)
          a += top[(ky * d.W + j + kx) * C + c] * wt[(ky * 3 + kx) * C + c];
      out[j * C + c] = a;
    }
}

// Conv outputs from pixel p of one image on, up to (not including) p_end, into out (pixel p's C
// values first): 8 or 4 pixels at once where conv_row_k3 applies, else 1. Returns how many were
// done.
inline int64_t conv_run(const float* img, const float* wt, const float* bias, int64_t k, Dims d,
                        int64_t p, int64_t p_end, float* out) {
  const int64_t y = p / d.W, x = p % d.W;
  if (k == 3 && y >= 1 && y + 1 < d.H && x >= 1) {
    if (p + 8 <= p_end && x + 9 <= d.W) {
      conv_row_k3<8>(img, wt, bias, d, y, x, out);
      return 8;
    }
    if (p + 4 <= p_end && x + 5 <= d.W) {
      conv_row_k3<4>(img, wt, bias, d, y, x, out);
      return 4;
    }
  }
  conv_pixel(img, wt, bias, k, d, y, x, out);
  return 1;
}

// Converts combined B x C statistics to the op's outputs (avg, max in x's dtype; ties float32).
std::tuple<Tensor, Tensor, Tensor> stats_outputs(const ChannelPartials& parts, Dims d,
                                                 at::ScalarType dtype) {
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  Tensor sum = at::empty({d.B, d.C}, opts), mx = at::empty({d.B, d.C}, opts);
  Tensor ties = at::empty({d.B, d.C}, opts);
  parts.combine(d.B, chunks_per_image(d.P), sum.data_ptr<float>(), mx.data_ptr<float>(),
                ties.data_ptr<float>());
  return {sum.mul_(1.0 / double(d.P)).to(dtype), mx.to(dtype), ties};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> dwconv_bn_gelu_eval(const Tensor& x_in,
                                                               const Tensor& w,
                                                               const Tensor& scale,
                                                               const Tensor& shift) {
  const NoAutocast no_autocast;
  const char* op = "hdkd::dwconv_bn_gelu_eval";
  check_dwconv_bn_gelu_eval(op, x_in, w, scale, shift);
  const Tensor x = nhwc_float(x_in);
  const Dims d = dims_of(x);
  const Tensor wt = tap_major(w), sc = float_contig(scale), sh = float_contig(shift);
  Tensor y = empty_nhwc(d.B, d.C, d.H, d.W);
  ChannelPartials parts(d.B * chunks_per_image(d.P), d.C);
  dwconv_affine_gelu(x.data_ptr<float>(), wt.data_ptr<float>(), sc.data_ptr<float>(),
                     sh.data_ptr<float>(), w.size(-1), d, x_in.scalar_type(), y.data_ptr<float>(),
                     parts);
  auto [avg, mx, ties] = stats_outputs(parts, d, x_in.scalar_type());
  return {like_input(y, x_in), avg, mx, ties};
}

}  // namespace

void dwconv_affine_gelu(const float* x, const float* wt, const float* scale, const float* shift,
                        int64_t k, Dims d, at::ScalarType stored, float* y,
                        const ChannelPartials& parts) {
  const int64_t C = d.C;
  for_pixel_chunks(d.B, d.P, [&](int64_t b, int64_t p0, int64_t p1, int64_t t) {
    const ChannelAcc acc = parts.row(t);
    acc.reset();
    const float* img = x + b * d.P * C;
    for (int64_t p = p0; p < p1;) {
      float* run = y + (b * d.P + p) * C;
      // With a scale the affine follows the conv; without, shift is the conv bias.
      const int64_t n = conv_run(img, wt, scale ? nullptr : shift, k, d, p, p1, run);
      for (float* out = run; out < run + n * C; out += C) {
        int64_t c = 0;
        if (scale) {
          for (; c + kVec <= C; c += kVec)
            gelu(at::vec::fmadd(Vec::loadu(out + c), Vec::loadu(scale + c),
                                Vec::loadu(shift + c)))
                .store(out + c);
          for (; c < C; ++c) out[c] = gelu(out[c] * scale[c] + shift[c]);
        } else {
          for (; c + kVec <= C; c += kVec) gelu(Vec::loadu(out + c)).store(out + c);
          for (; c < C; ++c) out[c] = gelu(out[c]);
        }
        round_to(stored, out, C);
        acc.add(out);
      }
      p += n;
    }
  });
}

namespace {

// Conv output only, into conv (B x P x C); per-task channel sums in parts.
void dwconv_plain(const float* x, const float* wt, int64_t k, Dims d, float* conv,
                  const ChannelPartials* parts) {
  for_pixel_chunks(d.B, d.P, [&](int64_t b, int64_t p0, int64_t p1, int64_t t) {
    float* sum = parts ? parts->row(t).sum : nullptr;
    if (sum)
      for (int64_t c = 0; c < d.C; ++c) sum[c] = 0.f;
    for (int64_t p = p0; p < p1;) {
      float* run = conv + (b * d.P + p) * d.C;
      const int64_t n = conv_run(x + b * d.P * d.C, wt, nullptr, k, d, p, p1, run);
      p += n;
      if (!sum) continue;
      for (const float* out = run; out < run + n * d.C; out += d.C) {
        int64_t c = 0;
        for (; c + kVec <= d.C; c += kVec)
          (Vec::loadu(sum + c) + Vec::loadu(out + c)).store(sum + c);
        for (; c < d.C; ++c) sum[c] += out[c];
      }
    }
  });
}

// Sum over all tasks of row field `which` (0 sum, 1 max slot reused as a second sum).
Tensor total(const ChannelPartials& parts, int64_t tasks, int which) {
  Tensor out = at::zeros({parts.C}, at::TensorOptions().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  for (int64_t t = 0; t < tasks; ++t) {
    const ChannelAcc r = parts.row(t);
    const float* v = which == 0 ? r.sum : r.max;
    for (int64_t c = 0; c < parts.C; ++c) o[c] += v[c];
  }
  return out;
}

// dW[tap, c] = sum over pixels of dconv[p, c] * x[p + tap offset, c], as k*k x C. Per-task partials
// combined in task order: the result does not depend on the thread count.
Tensor dwconv_weight_grad(const float* x, const float* dconv, int64_t k, Dims d) {
  const int64_t C = d.C, taps = k * k, tasks = d.B * chunks_per_image(d.P);
  Tensor parts = at::zeros({tasks, taps, C}, at::TensorOptions().dtype(at::kFloat));
  float* pp = parts.data_ptr<float>();
  for_pixel_chunks(d.B, d.P, [&](int64_t b, int64_t p0, int64_t p1, int64_t t) {
    const float* img = x + b * d.P * C;
    for (int64_t p = p0; p < p1; ++p) {
      const float* g = dconv + (b * d.P + p) * C;
      const PixelTaps in(k, d, p / d.W, p % d.W);
      for (int64_t i = 0; i < in.n; ++i) {
        const float* src = img + in.src[i];
        float* acc = pp + t * taps * C + in.tap[i];
        int64_t c = 0;
        for (; c + kVec <= C; c += kVec)
          at::vec::fmadd(Vec::loadu(g + c), Vec::loadu(src + c), Vec::loadu(acc + c))
              .store(acc + c);
        for (; c < C; ++c) acc[c] += g[c] * src[c];
      }
    }
  });
  Tensor dw = at::zeros({taps, C}, at::TensorOptions().dtype(at::kFloat));
  float* out = dw.data_ptr<float>();
  for (int64_t t = 0; t < tasks; ++t)
    for (int64_t i = 0; i < taps * C; ++i) out[i] += pp[t * taps * C + i];
  return dw;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> dwconv_bn_gelu_train(
    const Tensor& x_in, const Tensor& w, const Tensor& gamma, const Tensor& beta, double eps) {
  const NoAutocast no_autocast;
  const char* op = "hdkd::dwconv_bn_gelu_train";
  check_dwconv_bn_gelu_train(op, x_in, w, gamma, beta);
  const Tensor x = nhwc_float(x_in);
  const Dims d = dims_of(x);
  const int64_t tasks = d.B * chunks_per_image(d.P), C = d.C;
  const double n = double(d.B * d.P);
  const Tensor wt = tap_major(w);
  Tensor conv = empty_nhwc(d.B, C, d.H, d.W);
  float* cp = conv.data_ptr<float>();
  ChannelPartials parts(tasks, C);
  dwconv_plain(x.data_ptr<float>(), wt.data_ptr<float>(), w.size(-1), d, cp, &parts);
  const Tensor mean = total(parts, tasks, 0).mul_(1.0 / n);
  // Two-pass variance: sum (conv - mean)^2.
  const float* mp = mean.data_ptr<float>();
  for_pixel_chunks(d.B, d.P, [&](int64_t b, int64_t p0, int64_t p1, int64_t t) {
    float* sq = parts.row(t).sum;
    for (int64_t c = 0; c < C; ++c) sq[c] = 0.f;
    for (int64_t p = p0; p < p1; ++p) {
      const float* v = cp + (b * d.P + p) * C;
      int64_t c = 0;
      for (; c + kVec <= C; c += kVec) {
        const Vec dv = Vec::loadu(v + c) - Vec::loadu(mp + c);
        at::vec::fmadd(dv, dv, Vec::loadu(sq + c)).store(sq + c);
      }
      for (; c < C; ++c) sq[c] += (v[c] - mp[c]) * (v[c] - mp[c]);
    }
  });
  const Tensor var = total(parts, tasks, 0).mul_(1.0 / n);
  const Tensor scale = float_contig(gamma).mul(at::rsqrt(var.add(eps))).contiguous();
  const Tensor shift = float_contig(beta).sub(mean.mul(scale)).contiguous();
  // Pass 3: y = GELU(conv * scale + shift) with its statistics, as in eval with a 1x1 "conv".
  const float *scp = scale.data_ptr<float>(), *shp = shift.data_ptr<float>();
  Tensor y = empty_nhwc(d.B, C, d.H, d.W);
  float* yp = y.data_ptr<float>();
  for_pixel_chunks(d.B, d.P, [&](int64_t b, int64_t p0, int64_t p1, int64_t t) {
    const ChannelAcc acc = parts.row(t);
    acc.reset();
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t off = (b * d.P + p) * C;
      int64_t c = 0;
      for (; c + kVec <= C; c += kVec)
        gelu(at::vec::fmadd(Vec::loadu(cp + off + c), Vec::loadu(scp + c), Vec::loadu(shp + c)))
            .store(yp + off + c);
      for (; c < C; ++c) yp[off + c] = gelu(cp[off + c] * scp[c] + shp[c]);
      round_to(x_in.scalar_type(), yp + off, C);
      acc.add(yp + off);
    }
  });
  auto [avg, mx, ties] = stats_outputs(parts, d, x_in.scalar_type());
  return {like_input(y, x_in), avg, mx, ties, conv, mean, var};
}

// dz = (gy + gavg / P + [y == max] gmax / ties) * GELU'(conv * scale + shift); then
// eval: dconv = dz * scale, dscale = sum dz * conv, dshift = sum dz;
// train: dconv = scale * (dz - mean(dz) - xhat * mean(dz * xhat)), dgamma = sum dz * xhat,
//        dbeta = sum dz, xhat = (conv - mean) * invstd.
DwconvBnGeluBackwardResult dwconv_bn_gelu_backward(const DwconvBnGeluBackwardArgs& a) {
  const NoAutocast no_autocast;
  const char* op = "hdkd::dwconv_bn_gelu_backward";
  const bool train = check_dwconv_bn_gelu_backward(op, a);
  const Tensor x = nhwc_float(a.x);
  const Dims d = dims_of(x);
  const int64_t C = d.C, P = d.P, tasks = d.B * chunks_per_image(P);
  const Tensor wt = tap_major(a.w);
  Tensor conv;
  if (given(a.conv)) {
    conv = nhwc_float(*a.conv);
  } else {
    conv = empty_nhwc(d.B, C, d.H, d.W);
    dwconv_plain(x.data_ptr<float>(), wt.data_ptr<float>(), a.w.size(-1), d,
                 conv.data_ptr<float>(), nullptr);
  }
  auto opt_nhwc = [](const std::optional<Tensor>& t) {
    return given(t) ? nhwc_float(*t) : Tensor();
  };
  auto opt_flat = [](const std::optional<Tensor>& t) {
    return given(t) ? float_contig(*t) : Tensor();
  };
  const Tensor gy = opt_nhwc(a.grad_y), gavg = opt_flat(a.grad_avg), gmax = opt_flat(a.grad_max);
  const Tensor scale = float_contig(a.scale), shift = float_contig(a.shift);
  const float *cp = conv.data_ptr<float>(), *scp = scale.data_ptr<float>(),
              *shp = shift.data_ptr<float>();
  const float* gyp = gy.defined() ? gy.data_ptr<float>() : nullptr;
  const float* gap = gavg.defined() ? gavg.data_ptr<float>() : nullptr;
  const float inv_p = 1.f / float(P);
  // The max's gradient, split evenly among the pixels whose stored y equals the stored max.
  Tensor y, ymax, share;
  if (gmax.defined()) {
    y = nhwc_float(a.y);
    ymax = float_contig(a.max);
    share = gmax.div(float_contig(a.ties)).contiguous();
  }
  const float* yp = y.defined() ? y.data_ptr<float>() : nullptr;
  const float* ymp = y.defined() ? ymax.data_ptr<float>() : nullptr;
  const float* shrp = y.defined() ? share.data_ptr<float>() : nullptr;

  // train: sum dz * (conv - mean) accumulated centred; sum dz * conv - mean * sum dz cancels
  // catastrophically when |mean| >> std
  const Tensor centre = train ? float_contig(*a.mean) : Tensor();
  const float* ctp = train ? centre.data_ptr<float>() : nullptr;
  Tensor dz = empty_nhwc(d.B, C, d.H, d.W);
  float* dzp = dz.data_ptr<float>();
  ChannelPartials parts(tasks, C);  // sum: sum dz, max slot: sum dz * conv (centred in train)
  for_pixel_chunks(d.B, P, [&](int64_t b, int64_t p0, int64_t p1, int64_t t) {
    const ChannelAcc acc = parts.row(t);
    for (int64_t c = 0; c < C; ++c) acc.sum[c] = acc.max[c] = 0.f;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t off = (b * P + p) * C;
      int64_t c = 0;
      for (; c + kVec <= C; c += kVec) {
        Vec base = gyp ? Vec::loadu(gyp + off + c) : Vec(0.f);
        if (gap) base = at::vec::fmadd(Vec::loadu(gap + b * C + c), Vec(inv_p), base);
        if (yp)
          base = at::vec::fmadd(Vec::loadu(yp + off + c).eq(Vec::loadu(ymp + b * C + c)),
                                Vec::loadu(shrp + b * C + c), base);
        const Vec cv = Vec::loadu(cp + off + c);
        const Vec g =
            base * gelu_grad(at::vec::fmadd(cv, Vec::loadu(scp + c), Vec::loadu(shp + c)));
        g.store(dzp + off + c);
        (Vec::loadu(acc.sum + c) + g).store(acc.sum + c);
        const Vec cc = ctp ? cv - Vec::loadu(ctp + c) : cv;
        at::vec::fmadd(g, cc, Vec::loadu(acc.max + c)).store(acc.max + c);
      }
      for (; c < C; ++c) {
        float base = gyp ? gyp[off + c] : 0.f;
        if (gap) base += gap[b * C + c] * inv_p;
        if (yp && yp[off + c] == ymp[b * C + c]) base += shrp[b * C + c];
        const float g = base * gelu_grad(cp[off + c] * scp[c] + shp[c]);
        dzp[off + c] = g;
        acc.sum[c] += g;
        acc.max[c] += g * (ctp ? cp[off + c] - ctp[c] : cp[off + c]);
      }
    }
  });
  const Tensor dsum = total(parts, tasks, 0), dsumc = total(parts, tasks, 1);
  Tensor dscale, dshift = dsum;
  Tensor mean, invstd, k1;  // train: dconv = scale * dz - (scale*mean(dz) + k1 * (conv - mean))
  if (train) {
    mean = float_contig(*a.mean);
    invstd = float_contig(*a.invstd);
    dscale = dsumc.mul(invstd);  // dgamma = sum dz * xhat
    k1 = scale.mul(invstd).mul_(dscale).div_(double(d.B * P)).contiguous();
  } else {
    dscale = dsumc;
  }
  const Tensor c0 = train ? scale.mul(dsum).div_(double(d.B * P)).contiguous() : Tensor();
  const float* mp = train ? mean.data_ptr<float>() : nullptr;
  const float* k1p = train ? k1.data_ptr<float>() : nullptr;
  const float* c0p = train ? c0.data_ptr<float>() : nullptr;
  for_pixel_chunks(d.B, P, [&](int64_t b, int64_t p0, int64_t p1, int64_t) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t off = (b * P + p) * C;
      int64_t c = 0;
      for (; c + kVec <= C; c += kVec) {
        Vec g = Vec::loadu(dzp + off + c) * Vec::loadu(scp + c);
        if (train)
          g = g - Vec::loadu(c0p + c) -
              Vec::loadu(k1p + c) * (Vec::loadu(cp + off + c) - Vec::loadu(mp + c));
        g.store(dzp + off + c);
      }
      for (; c < C; ++c) {
        float g = dzp[off + c] * scp[c];
        if (train) g -= c0p[c] + k1p[c] * (cp[off + c] - mp[c]);
        dzp[off + c] = g;
      }
    }
  });
  const int64_t k = a.w.size(-1);
  // dx: the conv of dconv with the spatially flipped kernel (stride 1, padding k / 2).
  const Tensor flipped = tap_major(a.w.flip({2, 3}));
  Tensor dx = empty_nhwc(d.B, C, d.H, d.W);
  for_pixel_chunks(d.B, P, [&](int64_t b, int64_t p0, int64_t p1, int64_t) {
    for (int64_t p = p0; p < p1;)
      p += conv_run(dzp + b * P * C, flipped.data_ptr<float>(), nullptr, k, d, p, p1,
                    dx.data_ptr<float>() + (b * P + p) * C);
  });
  const Tensor dw = dwconv_weight_grad(x.data_ptr<float>(), dzp, k, d)
                        .t().contiguous().view({C, 1, k, k});
  return {like_input(dx, a.x), dw.to(a.w.scalar_type()), dscale.to(a.scale.scalar_type()),
          dshift.to(a.shift.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(hdkd, CPU, m) {
  m.impl("dwconv_bn_gelu_eval", &dwconv_bn_gelu_eval);
  m.impl("dwconv_bn_gelu_train", &dwconv_bn_gelu_train);
  m.impl("dwconv_bn_gelu_backward", &dwconv_bn_gelu_backward_op<&dwconv_bn_gelu_backward>);
}

}  // namespace hdkd::cpu
