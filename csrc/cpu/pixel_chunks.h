// The CPU kernels' parallel loop: at::parallel_for over (image, chunk of about kChunk pixels).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace hdkd::cpu {

constexpr int64_t kChunk = 256;  // pixels per parallel task

inline int64_t chunks_per_image(int64_t P) { return (P + kChunk - 1) / kChunk; }

// The chunks of an image are of equal size (up to one pixel), not kChunk and a remainder: with
// one image at a time, a short last chunk would leave a thread idle.
inline int64_t chunk_size(int64_t P) {
  const int64_t per = chunks_per_image(P);
  return (P + per - 1) / per;
}

// fn(b, p0, p1, task) for the chunks [p0, p1) of every image b; task = b * chunks_per_image(P)
// + chunk indexes per-task partial results.
template <class F>
void for_pixel_chunks(int64_t B, int64_t P, const F& fn) {
  const int64_t per = chunks_per_image(P), size = chunk_size(P);
  at::parallel_for(0, B * per, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / per, p0 = (t % per) * size;
      fn(b, p0, std::min(P, p0 + size), t);
    }
  });
}

}  // namespace hdkd::cpu
