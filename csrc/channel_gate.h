// The channel gate ca = sigmoid(MLP(avg) + MLP(max)) and its backward, on B x C float32 tensors
// (small: ATen ops on whichever device they live), shared by the CPU and CUDA kernels.
// fc1: R x C x 1 x 1, fc2: C x R x 1 x 1, MLP(v) = fc2 gelu(fc1 v).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sigmoid.h>

namespace hdkd {

inline at::Tensor channel_gate(const at::Tensor& avg, const at::Tensor& mx,
                               const at::Tensor& fc1, const at::Tensor& fc2) {
  const int64_t R = fc1.size(0), C = fc1.size(1);
  const at::Tensor w1 = fc1.to(at::kFloat).reshape({R, C});
  const at::Tensor w2 = fc2.to(at::kFloat).reshape({C, R});
  auto mlp = [&](const at::Tensor& v) { return at::mm(at::gelu(at::mm(v, w1.t())), w2.t()); };
  return at::sigmoid(mlp(avg).add_(mlp(mx))).contiguous();
}

struct ChannelGateGrads {
  at::Tensor fc1, fc2;  // R x C, C x R (float32)
  at::Tensor avg, max;  // B x C, contiguous: d(loss)/d(channel average), d(loss)/d(channel max)
};

// From dca = d(loss)/d(ca) and the forward's ca, avg and max.
inline ChannelGateGrads channel_gate_backward(const at::Tensor& dca, const at::Tensor& ca,
                                              const at::Tensor& avg, const at::Tensor& mx,
                                              const at::Tensor& fc1, const at::Tensor& fc2) {
  const int64_t R = fc1.size(0), C = fc1.size(1);
  const at::Tensor w1 = fc1.to(at::kFloat).reshape({R, C});
  const at::Tensor w2 = fc2.to(at::kFloat).reshape({C, R});
  const at::Tensor a1 = at::mm(avg, w1.t()), m1 = at::mm(mx, w1.t());
  const at::Tensor dlogit = dca.mul(ca).mul_(ca.neg().add_(1.0));
  const at::Tensor dw2 = at::mm(dlogit.t(), at::gelu(a1).add_(at::gelu(m1)));
  const at::Tensor dg = at::mm(dlogit, w2);
  const at::Tensor da1 = at::gelu_backward(dg, a1), dm1 = at::gelu_backward(dg, m1);
  const at::Tensor dw1 = at::mm(da1.t(), avg).add_(at::mm(dm1.t(), mx));
  return {dw1, dw2, at::mm(da1, w1).contiguous(), at::mm(dm1, w1).contiguous()};
}

}  // namespace hdkd
