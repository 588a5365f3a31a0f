// Template definitions for common.h.
#pragma once

#include <ATen/Parallel.h>

namespace hdkd::cpu {

inline int64_t chunks_per_image(int64_t P) { return (P + kChunk - 1) / kChunk; }

template <class F>
void for_pixel_chunks(int64_t B, int64_t P, const F& fn) {
  const int64_t per = chunks_per_image(P);
  at::parallel_for(0, B * per, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / per, p0 = (t % per) * kChunk;
      fn(b, p0, std::min(P, p0 + kChunk), t);
    }
  });
}

}  // namespace hdkd::cpu
