// Deterministic sums on the GPU: partial sums over chunks of kChunk terms in parallel, then the
// partials in chunk order (no atomics: the result does not depend on the schedule).
#pragma once

#include <ATen/ops/empty.h>

#include <algorithm>

#include "cuda/divisor.cuh"
#include "cuda/launch.cuh"

namespace hdkd::cuda {

// Terms per partial sum of the chunked reductions.
constexpr int64_t kChunk = 256;

// out[j] = sum over t in [0, n) of term(j, t) for j in [0, m) (float32 out, on like's device):
// partial sums over chunks of kChunk terms in parallel, then each j's partials in chunk order.
// Consecutive j run in consecutive threads, so put the fastest-varying memory index in j.
template <class Term>
Tensor sum_terms(int64_t m, int64_t n, const Term& term, const Tensor& like) {
  const int64_t chunks = std::max<int64_t>((n + kChunk - 1) / kChunk, 1);
  const auto opts = like.options().dtype(at::kFloat);
  Tensor partial = at::empty({chunks * m}, opts), out = at::empty({m}, opts);
  float* pp = partial.data_ptr<float>();
  const Divisor by_m(m);
  for_each_index(chunks * m, [=] HDKD_HOST_DEVICE(int64_t i) {
    int64_t chunk, j;
    by_m.divmod(i, chunk, j);
    const int64_t t0 = chunk * kChunk, t1 = t0 + kChunk < n ? t0 + kChunk : n;
    float acc = 0.f;
    for (int64_t t = t0; t < t1; ++t) acc += term(j, t);
    pp[i] = acc;
  });
  float* op = out.data_ptr<float>();
  for_each_index(m, [=] HDKD_HOST_DEVICE(int64_t j) {
    float acc = 0.f;
    for (int64_t ch = 0; ch < chunks; ++ch) acc += pp[ch * m + j];
    op[j] = acc;
  });
  return out;
}

}  // namespace hdkd::cuda
