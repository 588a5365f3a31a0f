// Per-task channel statistics and their combination (channel_stats.h).
#include "cpu/channel_stats.h"

#include <ATen/ops/empty.h>

#include <limits>

#include "cpu/vec.h"
#include "max_with_ties.h"

namespace hdkd::cpu {

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
    // a new max (or NaN, which sticks) restarts the ties at 1; a tie adds 1 (eq() is 1.0
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

}  // namespace hdkd::cpu
