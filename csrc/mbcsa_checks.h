// Argument checks of hdkd::mbcsa_eval, shared by the CPU and CUDA kernels.
#pragma once

#include <optional>

#include "dwconv_bn_gelu_checks.h"

namespace hdkd {

// x (B x cin x H x W) and the BN-folded weights of an MBCSA block of hidden width hid and cout
// outputs; shortcut (cout x cin x 1 x 1) given exactly when the block downsamples.
inline void check_mbcsa_eval(const char* op, const at::Tensor& x, const at::Tensor& expand_w,
                             const at::Tensor& expand_b, const at::Tensor& dw_w,
                             const at::Tensor& dw_b, const at::Tensor& fc1, const at::Tensor& fc2,
                             const at::Tensor& sa_w, const at::Tensor& project_w,
                             const at::Tensor& project_b,
                             const std::optional<at::Tensor>& shortcut) {
  check_float_tensor(op, "x", x, 4, x);
  const int64_t cin = x.size(1), hid = expand_w.size(0), cout = project_w.size(0),
                k = dw_w.size(-1), R = fc1.size(0);
  check_sizes(op, "expand_weight", expand_w, {hid, cin, 1, 1}, x);
  check_sizes(op, "expand_bias", expand_b, {hid}, x);
  TORCH_CHECK(k % 2 == 1 && k <= kMaxDwKernel, op, ": expected dw_weight of shape (", hid,
              ", 1, k, k) with k odd and <= ", kMaxDwKernel, ", got ", dw_w.sizes());
  check_sizes(op, "dw_weight", dw_w, {hid, 1, k, k}, x);
  check_sizes(op, "dw_bias", dw_b, {hid}, x);
  check_sizes(op, "fc1_weight", fc1, {R, hid, 1, 1}, x);
  check_sizes(op, "fc2_weight", fc2, {hid, R, 1, 1}, x);
  check_sa_weight(op, sa_w, x);
  check_sizes(op, "project_weight", project_w, {cout, hid, 1, 1}, x);
  check_sizes(op, "project_bias", project_b, {cout}, x);
  if (shortcut.has_value() && shortcut->defined())
    check_sizes(op, "shortcut", *shortcut, {cout, cin, 1, 1}, x);
  else
    TORCH_CHECK(cin == cout, op, ": expected cin == cout without a shortcut, got ", cin, " and ",
                cout);
}

}  // namespace hdkd
