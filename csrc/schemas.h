// Schemas of the hdkd:: operators, defined by schemas.cpp (and, under another namespace, by
// tests/cuda_emulation for the CPU-emulated CUDA kernels). Kernels: csrc/cpu (CPU), csrc/cuda
// (CUDA); fake implementations and autograd: hdkd/ops/ext/ (one module per op).
//
// Saved-for-backward outputs (float32 whatever the input dtype): ca (B x C channel gate),
// sa (B x H x W spatial gate), ties (B x C: how many pixels of y equal the channel's max; the
// max's gradient is split evenly among them, as torch.amax does), conv (the depthwise conv
// output, channels_last), mean / var (biased batch statistics). avg and max are of y as returned.
#pragma once

#include <torch/library.h>

namespace hdkd {

inline void define_schemas(torch::Library& m) {
  // Saves only the two gates; the backward recomputes the channel statistics and their ties in a
  // pass over h. The Triton family (hdkd/ops/triton) returns them instead, because its fused
  // attention + project op consumes them from the depthwise pass (docs/architecture.md, 4).
  m.def("channel_spatial_attention_forward(Tensor h, Tensor fc1_weight, Tensor fc2_weight, "
        "Tensor sa_weight) -> (Tensor out, Tensor ca, Tensor sa)");
  m.def("channel_spatial_attention_backward(Tensor grad, Tensor h, Tensor fc1_weight, "
        "Tensor fc2_weight, Tensor sa_weight, Tensor ca, Tensor sa) "
        "-> (Tensor grad_h, Tensor grad_fc1, Tensor grad_fc2, Tensor grad_sa)");
  // Eval: GELU(conv(x, w) * scale + shift), scale/shift the folded BN affine.
  m.def("dwconv_bn_gelu_eval(Tensor x, Tensor weight, Tensor scale, Tensor shift) "
        "-> (Tensor y, Tensor avg, Tensor max, Tensor ties)");
  // Train: BN with the batch statistics of conv(x, w); running statistics are the caller's job.
  m.def("dwconv_bn_gelu_train(Tensor x, Tensor weight, Tensor gamma, Tensor beta, float eps) "
        "-> (Tensor y, Tensor avg, Tensor max, Tensor ties, Tensor conv, Tensor mean, "
        "Tensor var)");
  // scale/shift: the affine that was applied; conv: saved by train (recomputed when None);
  // y, max, ties: the forward's outputs (where grad_max goes);
  // mean/invstd given (train): the BN batch-statistics backward, and grad_scale/grad_shift are
  // d/dgamma, d/dbeta.
  m.def("dwconv_bn_gelu_backward(Tensor? grad_y, Tensor? grad_avg, Tensor? grad_max, Tensor x, "
        "Tensor weight, Tensor? conv, Tensor scale, Tensor shift, Tensor y, Tensor max, "
        "Tensor ties, Tensor? mean, Tensor? invstd) -> (Tensor grad_x, Tensor grad_weight, "
        "Tensor grad_scale, Tensor grad_shift)");
  // Whole eval-mode MBCSA block (expansion > 1) from BN-folded weights.
  m.def("mbcsa_eval(Tensor x, Tensor expand_weight, Tensor expand_bias, Tensor dw_weight, "
        "Tensor dw_bias, Tensor fc1_weight, Tensor fc2_weight, Tensor sa_weight, "
        "Tensor project_weight, Tensor project_bias, Tensor? shortcut) -> Tensor");
}

}  // namespace hdkd
