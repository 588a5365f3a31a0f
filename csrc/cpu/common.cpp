#include "cpu/common.h"

#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <limits>

#include "max_with_ties.h"
#include "spatial_gate_math.h"

namespace hdkd::cpu {

Dims dims_of(const at::Tensor& x) {
  return {x.size(0), x.size(1), x.size(2), x.size(3), x.size(2) * x.size(3)};
}

void check_input(const char* op, const char* name, const at::Tensor& t, int64_t dim) {
  TORCH_CHECK(t.defined(), op, ": expected ", name, " to be a tensor, got None");
  TORCH_CHECK(t.device().is_cpu(), op, ": expected ", name, " on cpu, got ", t.device());
  TORCH_CHECK(t.dim() == dim, op, ": expected ", name, " to be ", dim, "-D, got shape ",
              t.sizes());
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf, op, ": expected ", name,
              " of dtype float32, bfloat16 or float16, got ", s);
}

at::Tensor nhwc_float(const at::Tensor& x) {
  return x.to(at::kFloat, false, false, at::MemoryFormat::ChannelsLast)
      .contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor float_contig(const at::Tensor& w) { return w.to(at::kFloat).contiguous(); }

at::Tensor empty_nhwc(int64_t B, int64_t C, int64_t H, int64_t W) {
  return at::empty({B, C, H, W}, at::TensorOptions().dtype(at::kFloat),
                   at::MemoryFormat::ChannelsLast);
}

bool wants_channels_last(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
}

at::Tensor like_input(const at::Tensor& r, const at::Tensor& x) {
  const auto fmt = wants_channels_last(x) ? at::MemoryFormat::ChannelsLast
                                          : at::MemoryFormat::Contiguous;
  return r.to(x.scalar_type(), false, false, fmt).contiguous(fmt);
}

namespace {

// v[0, n) through T and back to float, 2 * kVec values per step (round to nearest even, as
// c10's conversions and Tensor.to do).
template <typename T, class Narrow, class Widen>
void round_through(float* v, int64_t n, const Narrow& narrow, const Widen& widen) {
  int64_t i = 0;
  for (; i + 2 * kVec <= n; i += 2 * kVec) {
    const auto [lo, hi] = widen(narrow(Vec::loadu(v + i), Vec::loadu(v + i + kVec)));
    lo.store(v + i);
    hi.store(v + i + kVec);
  }
  for (; i < n; ++i) v[i] = static_cast<float>(T(v[i]));
}

}  // namespace

void round_to(at::ScalarType dtype, float* v, int64_t n) {
  if (dtype == at::kBFloat16)
    round_through<c10::BFloat16>(v, n, at::vec::convert_float_bfloat16,
                                 at::vec::convert_bfloat16_float);
  else if (dtype == at::kHalf)
    round_through<c10::Half>(v, n, at::vec::convert_float_half, at::vec::convert_half_float);
}

namespace {

// max(a, b) that propagates NaN, as torch.amax and at::vec::maximum do.
inline float nan_max(float a, float b) { return b > a || std::isnan(b) ? b : a; }

}  // namespace

void ChannelAcc::reset() const {
  for (int64_t c = 0; c < C; ++c) {
    sum[c] = 0.f;
    max[c] = -std::numeric_limits<float>::infinity();
    ties[c] = 0.f;
  }
}

void ChannelAcc::add(const float* v) const {
  int64_t c = 0;
  for (; c + kVec <= C; c += kVec) {
    const Vec x = Vec::loadu(v + c), m = Vec::loadu(max + c);
    (Vec::loadu(sum + c) + x).store(sum + c);
    // a new max (or NaN, which sticks) restarts the count at 1; a tie adds 1 (eq() is 1.0
    // where equal, else 0.0)
    const Vec takes = (x > m) | x.isnan();
    Vec::blendv(Vec::loadu(ties + c) + x.eq(m), Vec(1.f), takes).store(ties + c);
    Vec::blendv(m, x, takes).store(max + c);
  }
  for (; c < C; ++c) {
    sum[c] += v[c];
    max_with_ties(v[c], 1.f, max[c], ties[c]);
  }
}

ChannelPartials::ChannelPartials(int64_t tasks, int64_t C)
    : buf(at::empty({tasks, 3, C}, at::TensorOptions().dtype(at::kFloat))), C(C) {}

ChannelAcc ChannelPartials::row(int64_t task) const {
  float* base = buf.data_ptr<float>() + task * 3 * C;
  return {base, base + C, base + 2 * C, C};
}

void ChannelPartials::combine(int64_t B, int64_t per, float* sum, float* max,
                              float* ties) const {
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      float s = 0.f, m = -std::numeric_limits<float>::infinity(), n = 0.f;
      for (int64_t t = b * per; t < (b + 1) * per; ++t) {
        const ChannelAcc r = row(t);
        s += r.sum[c];
        max_with_ties(r.max[c], r.ties[c], m, n);
      }
      if (sum) sum[b * C + c] = s;
      if (max) max[b * C + c] = m;
      if (ties) ties[b * C + c] = n;
    }
  }
}

void channel_pool(const float* h, const float* ca, Dims d, float* pooled, float* ties) {
  const int64_t C = d.C;
  const float inv_c = 1.f / float(C);
  for_pixel_chunks(d.B, d.P, [&](int64_t b, int64_t p0, int64_t p1, int64_t) {
    const float* g = ca + b * C;
    float* mean_out = pooled + b * 2 * d.P;
    float* max_out = mean_out + d.P;
    for (int64_t p = p0; p < p1; ++p) {
      const float* row = h + (b * d.P + p) * C;
      Vec vs(0.f);
      float s = 0.f, m = -std::numeric_limits<float>::infinity();
      int64_t c = 0;
      if (C >= kVec) {
        Vec vm = Vec::loadu(row) * Vec::loadu(g);
        for (; c + kVec <= C; c += kVec) {
          const Vec u = Vec::loadu(row + c) * Vec::loadu(g + c);
          vs = vs + u;
          vm = at::vec::maximum(vm, u);
        }
        float lanes_s[kVec], lanes_m[kVec];
        vs.store(lanes_s);
        vm.store(lanes_m);
        for (int64_t i = 0; i < kVec; ++i) {
          s += lanes_s[i];
          m = nan_max(m, lanes_m[i]);
        }
      }
      for (; c < C; ++c) {
        const float u = row[c] * g[c];
        s += u;
        m = nan_max(m, u);
      }
      mean_out[p] = s * inv_c;
      max_out[p] = m;
      if (ties) {
        float n = 0.f;
        for (int64_t cc = 0; cc < C; ++cc) n += row[cc] * g[cc] == m ? 1.f : 0.f;
        ties[b * d.P + p] = n;
      }
    }
  });
}

void spatial_gate(const float* pooled, const float* w, int64_t k, Dims d, float* sa) {
  at::parallel_for(0, d.B * d.H, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / d.H, y = t % d.H;
      for (int64_t x = 0; x < d.W; ++x)
        sa[b * d.P + y * d.W + x] = sigmoid(spatial_gate_logit(pooled, w, k, d.H, d.W, b, y, x));
    }
  });
}

}  // namespace hdkd::cpu
