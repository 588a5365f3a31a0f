// Layouts of tensors and allocation of outputs (layout.cuh).
#include "cuda/layout.cuh"

#include <ATen/ops/empty.h>

namespace hdkd::cuda {

Layout layout_of(const Tensor& t) {
  const bool channels_last = t.stride(1) < t.stride(3);
  const bool dense = channels_last ? t.is_contiguous(at::MemoryFormat::ChannelsLast)
                                   : t.is_contiguous();
  const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
  return {t.size(0),   C,           H,           W,
          t.stride(0), t.stride(1), t.stride(2), t.stride(3),
          channels_last, dense, Divisor(C), Divisor(H * W), Divisor(W)};
}

Tensor empty_like_input(const Tensor& x, at::IntArrayRef sizes, at::ScalarType dtype) {
  const auto fmt =
      wants_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return at::empty(sizes, x.options().dtype(dtype), fmt);
}

Tensor empty_nhwc_float(const Tensor& like, int64_t B, int64_t C, int64_t H, int64_t W) {
  return at::empty({B, C, H, W}, like.options().dtype(at::kFloat),
                   at::MemoryFormat::ChannelsLast);
}

}  // namespace hdkd::cuda
