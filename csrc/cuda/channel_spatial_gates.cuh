// The channel-spatial attention's channel pool, spatial gate and gate application on the GPU,
// shared by its own kernels (channel_spatial_attention.cu) and the fused MBCSA kernel (mbcsa.cu).
// The channel gate ca is channel_gate.h's.
#pragma once

#include "cuda/launch.cuh"

namespace hdkd::cuda {

// The channel-spatial attention gates on h (B x C x H x W, any layout and dtype), ca B x C float32:
//   pooled[b, 0|1, p] = mean|max over c of u = h * ca (ties, when not null: B x H*W, the number of
//   channels whose u equals the max; gu, when g is given: B x H*W, sum over c of g * u, g laid
//   out like h or not, of h's dtype);
//   sa[b, p] = sigmoid(conv_kxk(pooled)) with sa_weight 1 x 2 x k x k.
Tensor channel_pool(const Tensor& h, const Tensor& ca, float* ties, const Tensor& g = Tensor(),
                    float* gu = nullptr);
Tensor spatial_gate(const Tensor& pooled, const Tensor& sa_weight);  // -> B x H x W float32
// h * (ca * sa + 1) into out (both laid out as described, may alias).
void apply_gates(const Tensor& h, const Tensor& ca, const Tensor& sa, const Tensor& out);

}  // namespace hdkd::cuda
