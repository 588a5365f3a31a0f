// Argument checks of the channel-spatial attention ops, shared by the CPU and CUDA kernels.
#pragma once

#include "op_checks.h"

namespace hdkd {

// h (B x C x H x W), fc1 (R x C x 1 x 1), fc2 (C x R x 1 x 1), sa (1 x 2 x k x k, k odd).
inline void check_channel_spatial_attention(const char* op, const at::Tensor& h,
                                            const at::Tensor& fc1, const at::Tensor& fc2,
                                            const at::Tensor& sa) {
  check_float_tensor(op, "h", h, 4, h);
  check_float_tensor(op, "fc1_weight", fc1, 4, h);
  check_float_tensor(op, "fc2_weight", fc2, 4, h);
  const int64_t C = h.size(1), R = fc1.size(0);
  TORCH_CHECK(fc1.sizes() == at::IntArrayRef({R, C, 1, 1}), op, ": expected fc1_weight of shape (",
              R, ", ", C, ", 1, 1), got ", fc1.sizes());
  TORCH_CHECK(fc2.sizes() == at::IntArrayRef({C, R, 1, 1}), op, ": expected fc2_weight of shape (",
              C, ", ", R, ", 1, 1), got ", fc2.sizes());
  check_sa_weight(op, sa, h);
}

// The backward's further inputs: grad like h, the forward's gates ca (B x C) and sa (B x H x W).
inline void check_channel_spatial_attention_backward(const char* op, const at::Tensor& grad,
                                                     const at::Tensor& h, const at::Tensor& ca,
                                                     const at::Tensor& sa) {
  check_float_tensor(op, "grad", grad, 4, h);
  check_like(op, "grad", grad, h);
  check_sizes(op, "ca", ca, {h.size(0), h.size(1)}, h);
  check_sizes(op, "sa", sa, {h.size(0), h.size(2), h.size(3)}, h);
}

}  // namespace hdkd
