// The memory format of the ops' outputs, shared by the CPU and CUDA kernels (host code).
#pragma once

#include <ATen/core/Tensor.h>

namespace hdkd {

// The ops return channels_last exactly when their input is channels_last and not also contiguous.
inline bool wants_channels_last(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
}

}  // namespace hdkd
