// Per-channel sum, max and the number of values tied at the max (torch.amax splits its gradient
// evenly among them; a NaN value makes the max NaN), taken per parallel task and combined per
// image in task order, so that the result does not depend on the thread count.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace hdkd::cpu {

// One task's running statistics of C channels.
struct ChannelAcc {
  float* sum;
  float* max;
  float* ties;
  int64_t C;
  void reset() const;
  void add(const float* v) const;  // one pixel's C values
};

// `tasks` rows of ChannelAcc (one per for_pixel_chunks task).
struct ChannelPartials {
  ChannelPartials(int64_t tasks, int64_t C);
  ChannelAcc row(int64_t task) const;
  // Images own consecutive runs of tasks_per_image tasks; writes B x C sum, max, ties (any may
  // be null).
  void combine(int64_t B, int64_t tasks_per_image, float* sum, float* max, float* ties) const;
  at::Tensor buf;
  int64_t C;
};

}  // namespace hdkd::cpu
