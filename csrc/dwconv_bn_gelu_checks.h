// Argument checks of the dwconv_bn_gelu ops, and the backward's arguments as one struct, shared by
// the CPU and CUDA kernels.
#pragma once

#include <optional>
#include <tuple>

#include "op_checks.h"

namespace hdkd {

constexpr int64_t kMaxDwKernel = 7;  // the largest depthwise kernel the kernels take

inline bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// x (B x C x H x W) and w (C x 1 x k x k, k odd and <= kMaxDwKernel).
inline void check_dwconv(const char* op, const at::Tensor& x, const at::Tensor& w) {
  check_float_tensor(op, "x", x, 4, x);
  check_float_tensor(op, "weight", w, 4, x);
  const int64_t C = x.size(1), k = w.size(-1);
  TORCH_CHECK(w.size(0) == C && w.size(1) == 1 && w.size(2) == k && k % 2 == 1 &&
                  k <= kMaxDwKernel,
              op, ": expected weight of shape (", C, ", 1, k, k) with k odd and <= ", kMaxDwKernel,
              ", got ", w.sizes());
}

inline void check_dwconv_bn_gelu_eval(const char* op, const at::Tensor& x, const at::Tensor& w,
                                      const at::Tensor& scale, const at::Tensor& shift) {
  check_dwconv(op, x, w);
  check_channel_vec(op, "scale", scale, x.size(1), x);
  check_channel_vec(op, "shift", shift, x.size(1), x);
}

inline void check_dwconv_bn_gelu_train(const char* op, const at::Tensor& x, const at::Tensor& w,
                                       const at::Tensor& gamma, const at::Tensor& beta) {
  check_dwconv(op, x, w);
  check_channel_vec(op, "gamma", gamma, x.size(1), x);
  check_channel_vec(op, "beta", beta, x.size(1), x);
  TORCH_CHECK(x.size(0) * x.size(2) * x.size(3) >= 2, op,
              ": batch statistics need at least 2 values per channel, got input of shape ",
              x.sizes());
}

// The arguments of hdkd::dwconv_bn_gelu_backward (schemas.h), which both backends' kernels take
// as this one struct (dwconv_bn_gelu_backward_op).
struct DwconvBnGeluBackwardArgs {
  const std::optional<at::Tensor>&grad_y, &grad_avg, &grad_max;
  const at::Tensor &x, &w;
  const std::optional<at::Tensor>& conv;
  const at::Tensor &scale, &shift, &y, &max, &ties;
  const std::optional<at::Tensor>&mean, &invstd;
};
using DwconvBnGeluBackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The op's kernel for a backend's implementation `impl`.
template <DwconvBnGeluBackwardResult (*impl)(const DwconvBnGeluBackwardArgs&)>
DwconvBnGeluBackwardResult dwconv_bn_gelu_backward_op(
    const std::optional<at::Tensor>& grad_y, const std::optional<at::Tensor>& grad_avg,
    const std::optional<at::Tensor>& grad_max, const at::Tensor& x, const at::Tensor& w,
    const std::optional<at::Tensor>& conv, const at::Tensor& scale, const at::Tensor& shift,
    const at::Tensor& y, const at::Tensor& max, const at::Tensor& ties,
    const std::optional<at::Tensor>& mean, const std::optional<at::Tensor>& invstd) {
  return impl({grad_y, grad_avg, grad_max, x, w, conv, scale, shift, y, max, ties, mean, invstd});
}

// Returns whether it is train's backward (mean and invstd given).
inline bool check_dwconv_bn_gelu_backward(const char* op, const DwconvBnGeluBackwardArgs& a) {
  const at::Tensor& x = a.x;
  const int64_t B = x.size(0), C = x.size(1);
  check_dwconv(op, x, a.w);
  check_channel_vec(op, "scale", a.scale, C, x);
  check_channel_vec(op, "shift", a.shift, C, x);
  check_like(op, "y", a.y, x);
  check_sizes(op, "max", a.max, {B, C}, x);
  check_sizes(op, "ties", a.ties, {B, C}, x);
  const bool train = given(a.mean);
  TORCH_CHECK(train == given(a.invstd), op,
              ": expected mean and invstd both given (train) or both None (eval)");
  if (train) {
    check_channel_vec(op, "mean", *a.mean, C, x);
    check_channel_vec(op, "invstd", *a.invstd, C, x);
  }
  if (given(a.grad_y)) check_like(op, "grad_y", *a.grad_y, x);
  if (given(a.grad_avg)) check_sizes(op, "grad_avg", *a.grad_avg, {B, C}, x);
  if (given(a.grad_max)) check_sizes(op, "grad_max", *a.grad_max, {B, C}, x);
  if (given(a.conv)) check_sizes(op, "conv", *a.conv, x.sizes(), x);
  return train;
}

}  // namespace hdkd
