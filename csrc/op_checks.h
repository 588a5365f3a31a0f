// Argument checks shared by the CPU and CUDA kernels (host code). Every tensor argument must be on
// the device of the op's main input x: the dispatcher picks the kernel by any argument's device.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace hdkd {

// t: a dim-D tensor of dtype float32, bfloat16 or float16 on x's device.
inline void check_float_tensor(const char* op, const char* name, const at::Tensor& t, int64_t dim,
                               const at::Tensor& x) {
  TORCH_CHECK(t.defined(), op, ": expected ", name, " to be a tensor, got None");
  TORCH_CHECK(t.device() == x.device(), op, ": expected ", name, " on ", x.device(), ", got ",
              t.device());
  TORCH_CHECK(t.dim() == dim, op, ": expected ", name, " to be ", dim, "-D, got shape ",
              t.sizes());
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kBFloat16 || s == at::kHalf, op, ": expected ", name,
              " of dtype float32, bfloat16 or float16, got ", s);
}

// t: a tensor of exactly these sizes on x's device.
inline void check_sizes(const char* op, const char* name, const at::Tensor& t,
                        at::IntArrayRef sizes, const at::Tensor& x) {
  TORCH_CHECK(t.defined(), op, ": expected ", name, " to be a tensor, got None");
  TORCH_CHECK(t.device() == x.device() && t.sizes() == sizes, op, ": expected ", name,
              " of shape ", sizes, " on ", x.device(), ", got ", t.sizes(), " on ", t.device());
}

// t: one value per channel (C) on x's device.
inline void check_channel_vec(const char* op, const char* name, const at::Tensor& t, int64_t C,
                              const at::Tensor& x) {
  check_sizes(op, name, t, {C}, x);
}

// t: of x's sizes and dtype, on x's device.
inline void check_like(const char* op, const char* name, const at::Tensor& t,
                       const at::Tensor& x) {
  check_sizes(op, name, t, x.sizes(), x);
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": expected ", name, " of dtype ",
              x.scalar_type(), ", got ", t.scalar_type());
}

// The spatial gate's conv weight: 1 x 2 x k x k with k odd.
inline void check_sa_weight(const char* op, const at::Tensor& sa, const at::Tensor& x) {
  check_float_tensor(op, "sa_weight", sa, 4, x);
  TORCH_CHECK(sa.size(0) == 1 && sa.size(1) == 2 && sa.size(2) == sa.size(3) && sa.size(2) % 2,
              op, ": expected sa_weight of shape (1, 2, k, k) with k odd, got ", sa.sizes());
}

}  // namespace hdkd
