// The channel pool and spatial gate of the channel-spatial attention (channel_spatial_gates.h).
#include "cpu/channel_spatial_gates.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu/activations.h"
#include "cpu/pixel_chunks.h"
#include "spatial_gate_math.h"

namespace hdkd::cpu {
namespace {

// max(a, b) that propagates NaN, as torch.amax and at::vec::maximum do.
inline float nan_max(float a, float b) { return b > a || std::isnan(b) ? b : a; }

float dot(const float* a, const float* b, int64_t n) {
  return at::vec::map2_reduce_all<float>([](const Vec& x, const Vec& y) { return x * y; },
                                         [](const Vec& x, const Vec& y) { return x + y; }, a, b, n);
}

}  // namespace

void channel_gate_image(const float* avg, const float* max, const float* fc1, const float* fc2,
                        int64_t R, int64_t C, float* hidden, float* ca) {
  // MLP(avg) + MLP(max) = W2 (GELU(W1 avg) + GELU(W1 max)): one pass over W2
  for (int64_t r = 0; r < R; ++r)
    hidden[r] = gelu(dot(fc1 + r * C, avg, C)) + gelu(dot(fc1 + r * C, max, C));
  for (int64_t c = 0; c < C; ++c) ca[c] = sigmoid(dot(fc2 + c * R, hidden, R));
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
  const int64_t r = k / 2, H = d.H, W = d.W;
  at::parallel_for(0, d.B * H, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / H, y = t % H;
      float* out = sa + b * d.P + y * W;
      const auto one_pixel = [&](int64_t x) {
        out[x] = sigmoid(spatial_gate_logit(pooled, w, k, H, W, b, y, x));
      };
      int64_t x = 0;
      for (; x < std::min(r, W); ++x) one_pixel(x);
      // kVec pixels at once where every tap's column is inside the row
      for (; x + kVec + r <= W; x += kVec) {
        Vec acc(0.f);
        for (int64_t ch = 0; ch < 2; ++ch)
          for (int64_t ky = 0; ky < k; ++ky) {
            const int64_t iy = y + ky - r;
            if (iy < 0 || iy >= H) continue;
            const float* src = pooled + ((b * 2 + ch) * H + iy) * W + x - r;
            const float* wk = w + (ch * k + ky) * k;
            for (int64_t kx = 0; kx < k; ++kx)
              acc = at::vec::fmadd(Vec::loadu(src + kx), Vec(wk[kx]), acc);
          }
        float logits[kVec];
        acc.store(logits);
        for (int64_t i = 0; i < kVec; ++i) out[x + i] = sigmoid(logits[i]);
      }
      for (; x < W; ++x) one_pixel(x);
    }
  });
}

}  // namespace hdkd::cpu
