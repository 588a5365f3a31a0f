// CUDA kernels of the channel-spatial attention (with its residual):
//   u = h * ca(h); out = u * sa(u) + h = h * (ca * sa + 1),
//   ca = sigmoid(MLP(avg_p h) + MLP(max_p h)), sa = sigmoid(conv_kxk([mean_c u, max_c u])).
// The channel MLP (B x C, tiny) runs on ATen in float32.

#include <tuple>

#include "channel_gate.h"
#include "channel_spatial_attention_checks.h"
#include "cuda/channel_spatial_gates.cuh"
#include "cuda/channel_stats.cuh"
#include "cuda/packs.cuh"
#include "spatial_gate_math.h"

namespace hdkd::cuda {
namespace {

// The shared checks, and h has at least one pixel.
void check_args(const char* op, const Tensor& h, const Tensor& fc1, const Tensor& fc2,
                const Tensor& sa) {
  check_channel_spatial_attention(op, h, fc1, fc2, sa);
  TORCH_CHECK(h.size(2) * h.size(3) > 0, op, ": expected h with at least one pixel, got shape ",
              h.sizes());
}

std::tuple<Tensor, Tensor, Tensor> channel_spatial_attention_forward(
    const Tensor& h, const Tensor& fc1, const Tensor& fc2, const Tensor& sa_weight) {
  check_args("hdkd::channel_spatial_attention_forward", h, fc1, fc2, sa_weight);
  const OpScope scope(h);
  const ChannelStats stats = channel_stats(h);
  const Tensor ca = channel_gate(stats.sum.div(double(h.size(2) * h.size(3))), stats.max, fc1, fc2);
  const Tensor sa = spatial_gate(channel_pool(h, ca, nullptr), sa_weight);
  Tensor out = empty_like_input(h, h.sizes(), h.scalar_type());
  apply_gates(h, ca, sa, out);
  return {out, ca, sa};
}

// Backward. With u = h * ca and s = sa(u):
//   du = g * s + dmean / C + [u == max_c u] * dmax_c / ties_c   (dmean, dmax_c: grads of the
//                                                                 pooled map)
//   dh = g + du * ca + davg / P + [h == max_p h] * dmx / ties_p   (davg, dmx: grads of the
//                                                                 channel stats)
// A max's gradient is split evenly among the values tied at it, as torch.amax does.
std::tuple<Tensor, Tensor, Tensor, Tensor> channel_spatial_attention_backward(
    const Tensor& grad, const Tensor& h, const Tensor& fc1, const Tensor& fc2,
    const Tensor& sa_weight, const Tensor& ca_in, const Tensor& sa_in) {
  const char* op = "hdkd::channel_spatial_attention_backward";
  check_args(op, h, fc1, fc2, sa_weight);
  check_channel_spatial_attention_backward(op, grad, h, ca_in, sa_in);
  const OpScope scope(h);
  const Layout lh = layout_of(h), lg = layout_of(grad);
  const int64_t B = lh.B, C = lh.C, H = lh.H, W = lh.W, P = lh.P();
  const Tensor ca = ca_in.to(at::kFloat).contiguous(), sa = sa_in.to(at::kFloat).contiguous();
  const float *cap = ca.data_ptr<float>(), *sap = sa.data_ptr<float>();

  const ChannelStats stats = channel_stats(h);
  const Tensor avg = stats.sum.div(double(P));
  // One pass over h and g per pixel: the pooled map of u = h * ca with its ties, and
  // dpre = d(sum_c g * u * s)/d(conv output) = (sum_c g * u) * s * (1 - s).
  Tensor pties_t = at::empty({B, P}, ca.options()), gu = at::empty({B, P}, ca.options());
  const float* pties = pties_t.data_ptr<float>();
  const Tensor pooled = channel_pool(h, ca, pties_t.data_ptr<float>(), grad, gu.data_ptr<float>());
  const float* pp = pooled.data_ptr<float>();
  const Tensor dpre_t = gu.mul_(sa.view({B, P})).mul_(sa.view({B, P}).neg().add_(1.0));
  const float* dpre = dpre_t.data_ptr<float>();

  // The k x k 2 -> 1 conv's backward: dpooled is the flipped-kernel conv of dpre (a gather per
  // pixel), dsa_weight one chunked sum per tap.
  const Tensor saw = sa_weight.to(at::kFloat).contiguous();
  const int64_t k = saw.size(-1), r = k / 2;
  const float* wp = saw.data_ptr<float>();
  Tensor dpooled_t = at::empty({B, 2, P}, ca.options());
  float* dpooled = dpooled_t.data_ptr<float>();
  const Divisor by_p = lh.by_p, by_w = lh.by_w, by_k(k), by_kk(k * k);
  for_each_index(B * 2 * P, [=] HDKD_HOST_DEVICE(int64_t i) {
    int64_t q, p, y, x;
    by_p.divmod(i, q, p);  // q = b * 2 + channel
    by_w.divmod(p, y, x);
    dpooled[i] = spatial_gate_input_grad(dpre, wp, k, H, W, q / 2, q % 2, y, x);
  });
  const Tensor dsaw = sum_terms(2 * k * k, B * P, [=] HDKD_HOST_DEVICE(int64_t tap, int64_t t) {
    int64_t ch, ktap, ky, kx, b, p, y, x;
    by_kk.divmod(tap, ch, ktap);
    by_k.divmod(ktap, ky, kx);
    by_p.divmod(t, b, p);
    by_w.divmod(p, y, x);
    y += ky - r;
    x += kx - r;
    if (y < 0 || y >= H || x < 0 || x >= W) return 0.f;
    return dpre[t] * pp[(b * 2 + ch) * P + y * W + x];
  }, h);

  // dca[b, c] = sum_p du * h.
  const float inv_c = 1.f / float(C);
  Tensor dca;
  HDKD_DISPATCH(h.scalar_type(), "hdkd_csa_backward_dca", [&] {
    const scalar_t *hp = h.data_ptr<scalar_t>(), *gp = grad.data_ptr<scalar_t>();
    dca = sum_terms(B * C, P, [=] HDKD_HOST_DEVICE(int64_t j, int64_t p) {
      int64_t b, c;
      lh.by_c.divmod(j, b, c);
      const int64_t q = b * P + p;
      const float hv = static_cast<float>(hp[lh.at(b, c, p)]);
      float du = static_cast<float>(gp[lg.at(b, c, p)]) * sap[q] + dpooled[b * 2 * P + p] * inv_c;
      if (hv * cap[j] == pp[(b * 2 + 1) * P + p]) du += dpooled[(b * 2 + 1) * P + p] / pties[q];
      return du * hv;
    }, h).view({B, C});
  });

  const ChannelGateGrads gate = channel_gate_backward(dca, ca, avg, stats.max, fc1, fc2);
  const Tensor davg = gate.avg.mul(1.0 / double(P)), dmx = gate.max;

  Tensor dh = empty_like_input(h, h.sizes(), h.scalar_type());
  const Layout ld = layout_of(dh);
  const float *davp = davg.data_ptr<float>(), *dmxp = dmx.data_ptr<float>();
  const float *mxp = stats.max.data_ptr<float>(), *tiesp = stats.ties.data_ptr<float>();
  const bool packed = packs_of_8({grad, h, dh}, {ca, davg, dmx, stats.max, stats.ties});
  HDKD_DISPATCH(h.scalar_type(), "hdkd_csa_backward_dh", [&] {
    const scalar_t *hp = h.data_ptr<scalar_t>(), *gp = grad.data_ptr<scalar_t>();
    scalar_t* out = dh.data_ptr<scalar_t>();
    if (packed) {  // the same arithmetic, 8 channels of one pixel per thread
      for_each_index(B * P * C / kPack, [=] HDKD_HOST_DEVICE(int64_t v) {
        int64_t q, c;  // q = b * P + p
        lh.by_c.divmod(v * kPack, q, c);
        const int64_t b = lh.by_p.div(q), p = q - b * P, j = b * C + c;
        float g[kPack], hv[kPack], ca8[kPack], av[kPack], mx[kPack], dm[kPack], ti[kPack];
        load_pack(gp + v * kPack, g);
        load_pack(hp + v * kPack, hv);
        load_pack(cap + j, ca8);
        load_pack(davp + j, av);
        load_pack(mxp + j, mx);
        load_pack(dmxp + j, dm);
        load_pack(tiesp + j, ti);
        const float s = sap[q], dmean = dpooled[b * 2 * P + p] * inv_c;
        const float pmax = pp[(b * 2 + 1) * P + p], dpmax = dpooled[(b * 2 + 1) * P + p];
#pragma unroll
        for (int k = 0; k < kPack; ++k) {
          float du = g[k] * s + dmean;
          if (hv[k] * ca8[k] == pmax) du += dpmax / pties[q];
          g[k] = g[k] + du * ca8[k] + av[k];  // the scalar path's order
          if (hv[k] == mx[k]) g[k] += dm[k] / ti[k];
        }
        store_pack(out + v * kPack, g);
      });
      return;
    }
    for_each_index(B * C * P, [=] HDKD_HOST_DEVICE(int64_t i) {
      int64_t b, c, p;
      ld.unravel(i, b, c, p);
      const int64_t q = b * P + p, j = b * C + c;
      const float g = static_cast<float>(gp[lg.offset(ld, i, b, c, p)]);
      const float hv = static_cast<float>(hp[lh.offset(ld, i, b, c, p)]);
      float du = g * sap[q] + dpooled[b * 2 * P + p] * inv_c;
      if (hv * cap[j] == pp[(b * 2 + 1) * P + p]) du += dpooled[(b * 2 + 1) * P + p] / pties[q];
      float v = g + du * cap[j] + davp[j];
      if (hv == mxp[j]) v += dmxp[j] / tiesp[j];
      out[ld.offset(ld, i, b, c, p)] = static_cast<scalar_t>(v);
    });
  });
  return {dh, gate.fc1.view(fc1.sizes()).to(fc1.scalar_type()),
          gate.fc2.view(fc2.sizes()).to(fc2.scalar_type()),
          dsaw.view(sa_weight.sizes()).to(sa_weight.scalar_type())};
}

}  // namespace

HDKD_CUDA_IMPL(m) {
  m.impl("channel_spatial_attention_forward", &channel_spatial_attention_forward);
  m.impl("channel_spatial_attention_backward", &channel_spatial_attention_backward);
}

}  // namespace hdkd::cuda
