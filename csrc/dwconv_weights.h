// The depthwise conv weights as the CPU and CUDA kernels read them (host code).
#pragma once

#include <ATen/core/Tensor.h>

namespace hdkd {

// w (C x 1 x k x k, any dtype) as float32 k*k x C, tap-major: a tap's C weights are contiguous.
inline at::Tensor tap_major(const at::Tensor& w) {
  return w.to(at::kFloat).reshape({w.size(0), w.size(2) * w.size(3)}).t().contiguous();
}

}  // namespace hdkd
