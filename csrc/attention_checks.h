// Shape checks of the attention weights, shared by the CPU and CUDA kernels (each checks dtype and
// device its own way first).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace hdkd {

// fc1 (R x C x 1 x 1), fc2 (C x R x 1 x 1), sa (1 x 2 x k x k, k odd) for h (B x C x H x W).
inline void check_attention_shapes(const char* op, const at::Tensor& h, const at::Tensor& fc1,
                                   const at::Tensor& fc2, const at::Tensor& sa) {
  const int64_t C = h.size(1), R = fc1.size(0);
  TORCH_CHECK(fc1.sizes() == at::IntArrayRef({R, C, 1, 1}), op, ": expected fc1_weight of shape (",
              R, ", ", C, ", 1, 1), got ", fc1.sizes());
  TORCH_CHECK(fc2.sizes() == at::IntArrayRef({C, R, 1, 1}), op, ": expected fc2_weight of shape (",
              C, ", ", R, ", 1, 1), got ", fc2.sizes());
  TORCH_CHECK(sa.size(0) == 1 && sa.size(1) == 2 && sa.size(2) == sa.size(3) && sa.size(2) % 2,
              op, ": expected sa_weight of shape (1, 2, k, k) with k odd, got ", sa.sizes());
}

}  // namespace hdkd
