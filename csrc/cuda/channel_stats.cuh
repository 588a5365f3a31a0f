// Per-(b, c) sum, max and ties (the number of values tied at the max) over the pixels of a
// B x C x H x W tensor, or of values computed per pixel, in chunks combined in order.
#pragma once

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>

#include "cuda/chunked_sum.cuh"
#include "cuda/layout.cuh"
#include "max_with_ties.h"

namespace hdkd::cuda {

// A running sum, and max with the number of values tied at it (a NaN value makes the max NaN).
struct SumMaxTies {
  float sum = 0.f, max = -INFINITY, ties = 0.f;
  HDKD_HOST_DEVICE void add(float v) {
    sum += v;
    max_with_ties(v, 1.f, max, ties);
  }
  HDKD_HOST_DEVICE static SumMaxTies merge(SumMaxTies a, const SumMaxTies& b) {
    a.sum += b.sum;
    max_with_ties(b.max, b.ties, a.max, a.ties);
    return a;
  }
};

// Per-(b, c) sum, max and the number of pixels equal to the max (torch.amax splits its gradient
// evenly among them), over the H*W pixels, float32 B x C. A NaN value makes the max NaN, as in
// torch.amax.
struct ChannelStats {
  Tensor sum, max, ties;
};

// Of t's values.
ChannelStats channel_stats(const Tensor& t);

// The totals, in chunk order, of per-chunk partials: partial 3 x chunks*B*C (sum, max, ties;
// entry chunk * B*C + b * C + c) over chunks of kChunk pixels.
ChannelStats combine_channel_stats(const Tensor& partial, int64_t chunks, int64_t B, int64_t C);

// Of row(p, y, x) for the pixels p = y * W + x of each plane, where row = row_of(b, c) is made
// once per thread and walks a chunk of pixels in order.
template <class RowOf>
ChannelStats channel_stats_of(int64_t B, int64_t C, int64_t H, int64_t W, const RowOf& row_of,
                              const Tensor& like) {
  const int64_t P = H * W, m = B * C, chunks = std::max<int64_t>((P + kChunk - 1) / kChunk, 1);
  const auto f32 = like.options().dtype(at::kFloat);
  Tensor partial = at::empty({3, chunks * m}, f32);
  float* ps = partial.data_ptr<float>();
  float *pm = ps + chunks * m, *pt = pm + chunks * m;
  const Divisor by_m(m), by_c(C), by_w(W);
  for_each_index(chunks * m, [=] HDKD_HOST_DEVICE(int64_t i) {
    int64_t chunk, j, b, c, y, x;
    by_m.divmod(i, chunk, j);
    by_c.divmod(j, b, c);
    const int64_t p0 = chunk * kChunk;
    const int64_t p1 = p0 + kChunk < P ? p0 + kChunk : P;
    by_w.divmod(p0, y, x);
    const auto row = row_of(computed_once(b), computed_once(c));
    SumMaxTies s;
    for (int64_t p = p0; p < p1; ++p) {
      s.add(row(p, y, x));
      if (++x == W) {
        x = 0;
        ++y;
      }
    }
    ps[i] = s.sum;
    pm[i] = s.max;
    pt[i] = s.ties;
  });
  return combine_channel_stats(partial, chunks, B, C);
}

}  // namespace hdkd::cuda
