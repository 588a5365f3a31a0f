#include "cuda/common.cuh"

#include "spatial_gate_math.h"

namespace hdkd::cuda {

Layout layout_of(const Tensor& t) {
  return {t.size(0),   t.size(1),   t.size(2),   t.size(3),
          t.stride(0), t.stride(1), t.stride(2), t.stride(3),
          t.stride(1) < t.stride(3)};
}

bool wants_channels_last(const Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
}

Tensor empty_like_input(const Tensor& x, at::IntArrayRef sizes, at::ScalarType dtype) {
  const auto fmt =
      wants_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return at::empty(sizes, x.options().dtype(dtype), fmt);
}

Tensor empty_nhwc_float(const Tensor& like, int64_t B, int64_t C, int64_t H, int64_t W) {
  return at::empty({B, C, H, W}, like.options().dtype(at::kFloat),
                   at::MemoryFormat::ChannelsLast);
}

void check_4d(const char* op, const char* name, const Tensor& t, const Tensor& x) {
  TORCH_CHECK(t.defined(), op, ": expected ", name, " to be a tensor, got None");
  TORCH_CHECK(t.device() == x.device(), op, ": expected ", name, " on ", x.device(), ", got ",
              t.device());
  TORCH_CHECK(t.dim() == 4, op, ": expected ", name, " to be 4-D, got shape ", t.sizes());
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf, op, ": expected ", name,
              " of dtype float32, bfloat16 or float16, got ", s);
}

void check_channel_vec(const char* op, const char* name, const Tensor& t, int64_t C,
                       const Tensor& x) {
  TORCH_CHECK(t.defined(), op, ": expected ", name, " to be a tensor, got None");
  TORCH_CHECK(t.device() == x.device(), op, ": expected ", name, " on ", x.device(), ", got ",
              t.device());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == C, op, ": expected ", name, " of shape (", C,
              "), got ", t.sizes());
}

void check_sizes(const char* op, const char* name, const Tensor& t, at::IntArrayRef sizes,
                 const Tensor& x) {
  TORCH_CHECK(t.defined(), op, ": expected ", name, " to be a tensor, got None");
  TORCH_CHECK(t.device() == x.device() && t.sizes() == sizes, op, ": expected ", name,
              " of shape ", sizes, " on ", x.device(), ", got ", t.sizes(), " on ", t.device());
}

ChannelStats channel_stats(const Tensor& t) {
  const Layout l = layout_of(t);
  ChannelStats out;
  HDKD_DISPATCH(t.scalar_type(), "hdkd_channel_stats", [&] {
    const scalar_t* src = t.data_ptr<scalar_t>();
    out = channel_stats_of(l.B, l.C, l.P(), [=] HDKD_HD(int64_t b, int64_t c, int64_t p) {
      return static_cast<float>(src[l.at(b, c, p)]);
    }, t);
  });
  return out;
}

namespace {

HDKD_HD inline void write_pool(float* out, float* ties, int64_t C, int64_t P, int64_t i,
                               const SumMaxTies& s) {
  const int64_t b = i / P, p = i % P;
  out[b * 2 * P + p] = s.sum / float(C);
  out[(b * 2 + 1) * P + p] = s.max;
  if (ties) ties[i] = s.ties;
}

}  // namespace

Tensor channel_pool(const Tensor& h, const Tensor& ca, float* ties) {
  const Layout l = layout_of(h);
  const int64_t P = l.P(), C = l.C;
  Tensor pooled = at::empty({l.B, 2, l.H, l.W}, h.options().dtype(at::kFloat));
  float* out = pooled.data_ptr<float>();
  const float* gate = ca.data_ptr<float>();
  HDKD_DISPATCH(h.scalar_type(), "hdkd_channel_pool", [&] {
    const scalar_t* src = h.data_ptr<scalar_t>();
    if (l.channels_last) {  // a warp per pixel: its lanes read neighbouring channels
      for_each_warp(l.B * P, [=] HDKD_HD(int64_t i, int lane) {
        const int64_t b = i / P, base = l.pixel(b, i % P);
        SumMaxTies s;
        for (int64_t c = lane; c < C; c += kWarp)
          s.add(static_cast<float>(src[base + c * l.sc]) * gate[b * C + c]);
        return s;
      }, [] HDKD_HD(const SumMaxTies& a, const SumMaxTies& b) { return SumMaxTies::merge(a, b); },
      [=] HDKD_HD(int64_t i, const SumMaxTies& s) { write_pool(out, ties, C, P, i, s); });
    } else {  // a thread per pixel: neighbouring threads read neighbouring pixels
      for_each_index(l.B * P, [=] HDKD_HD(int64_t i) {
        const int64_t b = i / P, base = l.pixel(b, i % P);
        SumMaxTies s;
        for (int64_t c = 0; c < C; ++c)
          s.add(static_cast<float>(src[base + c * l.sc]) * gate[b * C + c]);
        write_pool(out, ties, C, P, i, s);
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
  for_each_index(B * P, [=] HDKD_HD(int64_t i) {
    out[i] = sigmoid(spatial_gate_logit(src, wp, k, H, W, i / P, (i % P) / W, i % W));
  });
  return sa;
}

void apply_gates(const Tensor& h, const Tensor& ca, const Tensor& sa, const Tensor& out) {
  const Layout lh = layout_of(h), lo = layout_of(out);
  const int64_t P = lh.P();
  const float *gate = ca.data_ptr<float>(), *spatial = sa.data_ptr<float>();
  HDKD_DISPATCH(h.scalar_type(), "hdkd_apply_gates", [&] {
    const scalar_t* src = h.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    for_each_index(lh.B * lh.C * P, [=] HDKD_HD(int64_t i) {
      int64_t b, c, p;
      lo.unravel(i, b, c, p);
      const float v = static_cast<float>(src[lh.at(b, c, p)]);
      const float scale = gate[b * lh.C + c] * spatial[b * P + p] + 1.f;
      dst[lo.at(b, c, p)] = static_cast<scalar_t>(v * scale);
    });
  });
}

}  // namespace hdkd::cuda
