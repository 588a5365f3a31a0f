// The channel pool, spatial gate and gate application of the channel-spatial attention
// (channel_spatial_gates.cuh).
#include "cuda/channel_spatial_gates.cuh"

#include <ATen/ops/empty.h>

#include "cuda/activations.cuh"
#include "cuda/channel_stats.cuh"
#include "cuda/packs.cuh"
#include "spatial_gate_math.h"

namespace hdkd::cuda {

namespace {

// The per-pixel sums of channel_pool: of u = h * ca (sum, max, ties) and of g * u.
struct PoolSums {
  SumMaxTies u;
  float gu = 0.f;
  HDKD_HOST_DEVICE static PoolSums merge(PoolSums a, const PoolSums& b) {
    a.u = SumMaxTies::merge(a.u, b.u);
    a.gu += b.gu;
    return a;
  }
};

// Channels c = first, first + step, ... < C of pixel i = b * P + p.
template <typename scalar_t>
HDKD_HOST_DEVICE PoolSums pool_sums(const scalar_t* h, const Layout& lh, const scalar_t* g,
                                    const Layout& lg, const float* ca, int64_t i, int64_t first,
                                    int64_t step) {
  int64_t b, p;
  lh.by_p.divmod(i, b, p);
  const int64_t C = lh.C;
  const int64_t hbase = lh.pixel(b, p), gbase = g ? lg.pixel(b, p) : 0;
  PoolSums s;
  for (int64_t c = first; c < C; c += step) {
    const float u = static_cast<float>(h[hbase + c * lh.sc]) * ca[b * C + c];
    s.u.add(u);
    if (g) s.gu += static_cast<float>(g[gbase + c * lg.sc]) * u;
  }
  return s;
}

HDKD_HOST_DEVICE inline void write_pool(float* out, float* ties, float* gu, int64_t C,
                                        const Divisor& P, int64_t i, const PoolSums& s) {
  int64_t b, p;
  P.divmod(i, b, p);
  out[(b * 2) * P.value() + p] = s.u.sum / float(C);
  out[(b * 2 + 1) * P.value() + p] = s.u.max;
  if (ties) ties[i] = s.u.ties;
  if (gu) gu[i] = s.gu;
}

}  // namespace

Tensor channel_pool(const Tensor& h, const Tensor& ca, float* ties, const Tensor& g, float* gu) {
  const Layout lh = layout_of(h), lg = g.defined() ? layout_of(g) : lh;
  const int64_t P = lh.P(), C = lh.C;
  Tensor pooled = at::empty({lh.B, 2, lh.H, lh.W}, h.options().dtype(at::kFloat));
  float* out = pooled.data_ptr<float>();
  const float* gate = ca.data_ptr<float>();
  HDKD_DISPATCH(h.scalar_type(), "hdkd_channel_pool", [&] {
    const scalar_t* hp = h.data_ptr<scalar_t>();
    const scalar_t* gp = g.defined() ? g.data_ptr<scalar_t>() : nullptr;
    if (lh.channels_last) {  // a warp per pixel: its lanes read neighbouring channels
      for_each_warp(lh.B * P, [=] HDKD_HOST_DEVICE(int64_t i, int lane) {
        return pool_sums(hp, lh, gp, lg, gate, i, lane, kWarp);
      }, [] HDKD_HOST_DEVICE(const PoolSums& a, const PoolSums& b) {
        return PoolSums::merge(a, b);
      }, [=] HDKD_HOST_DEVICE(int64_t i, const PoolSums& s) {
        write_pool(out, ties, gu, C, lh.by_p, i, s);
      });
    } else {  // a thread per pixel: neighbouring threads read neighbouring pixels
      for_each_index(lh.B * P, [=] HDKD_HOST_DEVICE(int64_t i) {
        write_pool(out, ties, gu, C, lh.by_p, i, pool_sums(hp, lh, gp, lg, gate, i, 0, 1));
      });
    }
  });
  return pooled;
}

Tensor spatial_gate(const Tensor& pooled, const Tensor& sa_weight) {
  const int64_t B = pooled.size(0), H = pooled.size(2), W = pooled.size(3), P = H * W;
  const Tensor w = sa_weight.to(at::kFloat).contiguous();
  const int64_t k = w.size(-1);
  Tensor sa = at::empty({B, H, W}, pooled.options());
  const float *src = pooled.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* out = sa.data_ptr<float>();
  const Divisor by_p(P), by_w(W);
  for_each_index(B * P, [=] HDKD_HOST_DEVICE(int64_t i) {
    int64_t b, p, y, x;
    by_p.divmod(i, b, p);
    by_w.divmod(p, y, x);
    out[i] = sigmoid(spatial_gate_logit(src, wp, k, H, W, b, y, x));
  });
  return sa;
}

void apply_gates(const Tensor& h, const Tensor& ca, const Tensor& sa, const Tensor& out) {
  const Layout lh = layout_of(h), lo = layout_of(out);
  const int64_t P = lh.P();
  const float *gate = ca.data_ptr<float>(), *spatial = sa.data_ptr<float>();
  const bool packed = packs_of_8({h, out}, {ca});
  HDKD_DISPATCH(h.scalar_type(), "hdkd_apply_gates", [&] {
    const scalar_t* src = h.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    if (packed) {
      for_each_index(lh.B * P * lh.C / kPack, [=] HDKD_HOST_DEVICE(int64_t v) {
        int64_t q, c;  // q = b * P + p
        lh.by_c.divmod(v * kPack, q, c);
        float x[kPack], g[kPack];
        load_pack(src + v * kPack, x);
        load_pack(gate + lh.by_p.div(q) * lh.C + c, g);
        const float s = spatial[q];
#pragma unroll
        for (int k = 0; k < kPack; ++k) x[k] *= g[k] * s + 1.f;
        store_pack(dst + v * kPack, x);
      });
      return;
    }
    for_each_index(lh.B * lh.C * P, [=] HDKD_HOST_DEVICE(int64_t i) {
      int64_t b, c, p;
      lo.unravel(i, b, c, p);
      const float v = static_cast<float>(src[lh.offset(lo, i, b, c, p)]);
      const float scale = gate[b * lh.C + c] * spatial[b * P + p] + 1.f;
      dst[lo.offset(lo, i, b, c, p)] = static_cast<scalar_t>(v * scale);
    });
  });
}

}  // namespace hdkd::cuda
