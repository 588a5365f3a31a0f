// CPU kernels of the channel-spatial attention (with its residual):
//   u = h * ca(h); out = u * sa(u) + h = h * (ca * sa + 1).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "channel_gate.h"
#include "channel_spatial_attention_checks.h"
#include "cpu/channel_spatial_gates.h"
#include "cpu/channel_stats.h"
#include "cpu/pixel_chunks.h"
#include "spatial_gate_math.h"

namespace hdkd::cpu {
namespace {

using at::Tensor;

// out = h * (ca * sa + 1) over B x P x C.
void apply_gates(const float* h, const float* ca, const float* sa, Dims d, float* out) {
  for_pixel_chunks(d.B, d.P, [&](int64_t b, int64_t p0, int64_t p1, int64_t) {
    for (int64_t q = b * d.P + p0; q < b * d.P + p1; ++q)
      gate_pixel(h + q * d.C, ca + b * d.C, sa[q], d.C, out + q * d.C);
  });
}

// du = g * s + dmean + [u == umax] * share at one pixel's channels, from what they share: the
// pixel's spatial gate s, the grad of the mean over its channels (dmean), the max over its
// channels (umax) and that max's grad split evenly among the channels tied at it (share).
struct PixelDu {
  float s, dmean, umax, share;
  Vec operator()(const Vec& g, const Vec& u) const {
    return at::vec::fmadd(u.eq(Vec(umax)), Vec(share), at::vec::fmadd(g, Vec(s), Vec(dmean)));
  }
  float operator()(float g, float u) const { return g * s + dmean + (u == umax ? share : 0.f); }
};

// Backward of the k x k 2 -> 1 conv of spatial_gate, given dpre = d(loss)/d(conv output):
//   dpooled[b, ch, q] = sum_taps dpre[b, q - tap] * w[ch, tap]   (the flipped-kernel conv)
//   dw[ch, tap] = sum_{b, q} dpre[b, q] * pooled[b, ch, q + tap]  (one tap per task: no atomics,
//                                                                 thread-count independent)
void spatial_gate_backward(const float* dpre, const float* pooled, const float* w, int64_t k,
                           Dims d, float* dpooled, float* dw) {
  const int64_t r = k / 2, H = d.H, W = d.W, P = d.P;
  at::parallel_for(0, d.B * H, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / H, y = t % H;
      for (int64_t x = 0; x < W; ++x)
        for (int64_t ch = 0; ch < 2; ++ch)
          dpooled[(b * 2 + ch) * P + y * W + x] =
              spatial_gate_input_grad(dpre, w, k, H, W, b, ch, y, x);
    }
  });
  at::parallel_for(0, 2 * k * k, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t ch = t / (k * k), ky = (t / k) % k, kx = t % k;
      double acc = 0.0;
      for (int64_t b = 0; b < d.B; ++b)
        for (int64_t y = std::max<int64_t>(0, r - ky); y < std::min(H, H + r - ky); ++y) {
          const float* g = dpre + b * P + y * W;
          const float* src = pooled + (b * 2 + ch) * P + (y + ky - r) * W + (kx - r);
          for (int64_t x = std::max<int64_t>(0, r - kx); x < std::min(W, W + r - kx); ++x)
            acc += double(g[x]) * double(src[x]);
        }
      dw[t] = static_cast<float>(acc);
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> channel_spatial_attention_forward(
    const Tensor& h_in, const Tensor& fc1, const Tensor& fc2, const Tensor& sa_weight) {
  const NoAutocast no_autocast;
  check_channel_spatial_attention("hdkd::channel_spatial_attention_forward", h_in, fc1, fc2,
                                  sa_weight);
  const Tensor h = nhwc_float(h_in);
  const Dims d = dims_of(h);
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  Tensor sum = at::empty({d.B, d.C}, opts), mx = at::empty({d.B, d.C}, opts);
  const int64_t per = chunks_per_image(d.P);
  ChannelPartials parts(d.B * per, d.C);
  const float* hp = h.data_ptr<float>();
  for_pixel_chunks(d.B, d.P, [&](int64_t b, int64_t p0, int64_t p1, int64_t t) {
    const ChannelAcc acc = parts.row(t);
    acc.reset();
    for (int64_t p = p0; p < p1; ++p) acc.add(hp + (b * d.P + p) * d.C);
  });
  parts.combine(d.B, per, sum.data_ptr<float>(), mx.data_ptr<float>(), nullptr);
  const Tensor ca = channel_gate(sum.mul_(1.0 / double(d.P)), mx, fc1, fc2);
  Tensor pooled = at::empty({d.B, 2, d.H, d.W}, opts), sa = at::empty({d.B, d.H, d.W}, opts);
  channel_pool(hp, ca.data_ptr<float>(), d, pooled.data_ptr<float>(), nullptr);
  const Tensor saw = float_contig(sa_weight);
  spatial_gate(pooled.data_ptr<float>(), saw.data_ptr<float>(), saw.size(-1), d,
               sa.data_ptr<float>());
  Tensor out = empty_nhwc(d.B, d.C, d.H, d.W);
  apply_gates(hp, ca.data_ptr<float>(), sa.data_ptr<float>(), d, out.data_ptr<float>());
  return {like_input(out, h_in), ca, sa};
}

// Backward. With u = h * ca and s = sa(u):
//   du = g * s + dmean / C + [u == max_c u] * dmax_c / ties_c   (dmean, dmax_c: grads of the
//                                                                 pooled map)
//   dh = g + du * ca + davg / P + [h == max_p h] * dmx / ties_p   (davg, dmx: grads of the
//                                                                 channel stats)
// A max's gradient is split evenly among the values tied at it, as torch.amax does.
std::tuple<Tensor, Tensor, Tensor, Tensor> channel_spatial_attention_backward(
    const Tensor& grad, const Tensor& h_in, const Tensor& fc1, const Tensor& fc2,
    const Tensor& sa_weight, const Tensor& ca_in, const Tensor& sa_in) {
  const NoAutocast no_autocast;
  const char* op = "hdkd::channel_spatial_attention_backward";
  check_channel_spatial_attention(op, h_in, fc1, fc2, sa_weight);
  check_channel_spatial_attention_backward(op, grad, h_in, ca_in, sa_in);
  const Tensor h = nhwc_float(h_in), g = nhwc_float(grad);
  const Tensor ca = float_contig(ca_in), sa = float_contig(sa_in);
  const Dims d = dims_of(h);
  const int64_t C = d.C, P = d.P;
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  const float *hp = h.data_ptr<float>(), *gp = g.data_ptr<float>();
  const float *cap = ca.data_ptr<float>(), *sap = sa.data_ptr<float>();

  // Pass A: channel statistics of h (with ties), pooled map of u (with ties), and
  // dpre = d(sum_c g * u)/d(conv output) = (sum_c g*u) * s * (1 - s).
  const int64_t per = chunks_per_image(P);
  ChannelPartials parts(d.B * per, C);
  Tensor pooled = at::empty({d.B, 2, d.H, d.W}, opts), dpre = at::empty({d.B, 1, d.H, d.W}, opts);
  Tensor pties = at::empty({d.B, P}, opts);
  channel_pool(hp, cap, d, pooled.data_ptr<float>(), pties.data_ptr<float>());
  float* dprep = dpre.data_ptr<float>();
  for_pixel_chunks(d.B, P, [&](int64_t b, int64_t p0, int64_t p1, int64_t t) {
    const ChannelAcc acc = parts.row(t);
    acc.reset();
    const float* gate = cap + b * C;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t off = (b * P + p) * C;
      acc.add(hp + off);
      Vec vs(0.f);
      int64_t c = 0;
      for (; c + kVec <= C; c += kVec)
        vs = at::vec::fmadd(Vec::loadu(gp + off + c) * Vec::loadu(hp + off + c),
                            Vec::loadu(gate + c), vs);
      float s = at::vec::vec_reduce_all<float>([](Vec& a, Vec& x) { return a + x; }, vs);
      for (; c < C; ++c) s += gp[off + c] * hp[off + c] * gate[c];
      const float sg = sap[b * P + p];
      dprep[b * P + p] = s * sg * (1.f - sg);
    }
  });
  Tensor sum = at::empty({d.B, C}, opts), mx = at::empty({d.B, C}, opts);
  Tensor ties = at::empty({d.B, C}, opts);
  parts.combine(d.B, per, sum.data_ptr<float>(), mx.data_ptr<float>(), ties.data_ptr<float>());
  const Tensor avg = sum.mul_(1.0 / double(P));

  const Tensor saw = float_contig(sa_weight);
  Tensor dpooled = at::empty({d.B, 2, d.H, d.W}, opts), dsaw = at::empty(saw.sizes(), opts);
  spatial_gate_backward(dprep, pooled.data_ptr<float>(), saw.data_ptr<float>(), saw.size(-1), d,
                        dpooled.data_ptr<float>(), dsaw.data_ptr<float>());
  const float* dpp = dpooled.data_ptr<float>();
  const float *plp = pooled.data_ptr<float>(), *ptp = pties.data_ptr<float>();
  const float inv_c = 1.f / float(C);
  auto du_at = [&](int64_t b, int64_t p) {
    const int64_t q = b * P + p;
    return PixelDu{sap[q], dpp[b * 2 * P + p] * inv_c, plp[(b * 2 + 1) * P + p],
                   dpp[(b * 2 + 1) * P + p] / ptp[q]};
  };

  // Pass B: dca[b, c] = sum_p du * h.
  ChannelPartials dparts(d.B * per, C);
  for_pixel_chunks(d.B, P, [&](int64_t b, int64_t p0, int64_t p1, int64_t t) {
    const ChannelAcc acc = dparts.row(t);
    acc.reset();
    float* dca = acc.sum;
    const float* gate = cap + b * C;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t off = (b * P + p) * C;
      const PixelDu du = du_at(b, p);
      int64_t c = 0;
      for (; c + kVec <= C; c += kVec) {
        const Vec hv = Vec::loadu(hp + off + c);
        at::vec::fmadd(du(Vec::loadu(gp + off + c), hv * Vec::loadu(gate + c)), hv,
                       Vec::loadu(dca + c))
            .store(dca + c);
      }
      for (; c < C; ++c) dca[c] += du(gp[off + c], hp[off + c] * gate[c]) * hp[off + c];
    }
  });
  Tensor dca = at::empty({d.B, C}, opts);
  dparts.combine(d.B, per, dca.data_ptr<float>(), nullptr, nullptr);

  const ChannelGateGrads gate = channel_gate_backward(dca, ca, avg, mx, fc1, fc2);
  const Tensor davg = gate.avg.mul(1.0 / double(P)), dmx = gate.max;

  // Pass C: dh.
  Tensor dh = empty_nhwc(d.B, C, d.H, d.W);
  float* dhp = dh.data_ptr<float>();
  // The channel max's gradient, split evenly among the pixels tied at it.
  const Tensor mshare = dmx.div(ties).contiguous();
  const float *davp = davg.data_ptr<float>(), *mxp = mx.data_ptr<float>(),
              *msp = mshare.data_ptr<float>();
  for_pixel_chunks(d.B, P, [&](int64_t b, int64_t p0, int64_t p1, int64_t) {
    const float *gate = cap + b * C, *dav = davp + b * C, *cmax = mxp + b * C, *cms = msp + b * C;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t off = (b * P + p) * C;
      const PixelDu pixel_du = du_at(b, p);
      int64_t c = 0;
      for (; c + kVec <= C; c += kVec) {
        const Vec gv = Vec::loadu(gp + off + c), hv = Vec::loadu(hp + off + c);
        const Vec gate_v = Vec::loadu(gate + c);
        const Vec du = pixel_du(gv, hv * gate_v);
        const Vec tied = at::vec::fmadd(hv.eq(Vec::loadu(cmax + c)), Vec::loadu(cms + c),
                                        Vec::loadu(dav + c));
        (gv + at::vec::fmadd(du, gate_v, tied)).store(dhp + off + c);
      }
      for (; c < C; ++c) {
        const float du = pixel_du(gp[off + c], hp[off + c] * gate[c]);
        const float tied = hp[off + c] == cmax[c] ? cms[c] : 0.f;
        dhp[off + c] = gp[off + c] + du * gate[c] + dav[c] + tied;
      }
    }
  });

  return {like_input(dh, h_in), gate.fc1.view(fc1.sizes()).to(fc1.scalar_type()),
          gate.fc2.view(fc2.sizes()).to(fc2.scalar_type()), dsaw.to(sa_weight.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(hdkd, CPU, m) {
  m.impl("channel_spatial_attention_forward", &channel_spatial_attention_forward);
  m.impl("channel_spatial_attention_backward", &channel_spatial_attention_backward);
}

}  // namespace hdkd::cpu
