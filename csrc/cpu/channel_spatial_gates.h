// The channel-spatial attention's channel pool, spatial gate and gate application on float32
// B x P x C data, shared by its own kernels (channel_spatial_attention.cpp) and the fused MBCSA
// kernel (mbcsa.cpp). The channel gate ca is channel_gate.h's.
#pragma once

#include <cstdint>

#include "cpu/staging.h"
#include "cpu/vec.h"

namespace hdkd::cpu {

// ca[c] = sigmoid(MLP(avg)[c] + MLP(max)[c]) for one image's C channel means and maxima, with
// MLP(v) = W2 GELU(W1 v), W1 = fc1 (R x C), W2 = fc2 (C x R), float32 contiguous: channel_gate.h's
// gate in loops. The fused eval kernel calls it once per image, where channel_gate.h's nine ATen
// ops cost more than the arithmetic (about 60 us per call on 2 threads). hidden: 2 R floats.
void channel_gate_image(const float* avg, const float* max, const float* fc1, const float* fc2,
                        int64_t R, int64_t C, float* hidden, float* ca);
// pooled[b, 0|1, p] = mean|max over c of u = h[b, p, c] * ca[b, c]   (pooled: B x 2 x H x W);
// ties (when not null, B x H*W): the number of channels whose u equals the max.
void channel_pool(const float* h, const float* ca, Dims d, float* pooled, float* ties);
// sa[b, p] = sigmoid(conv_kxk(pooled)[b, p]) with sa_weight 1 x 2 x k x k (float32 contiguous).
void spatial_gate(const float* pooled, const float* w, int64_t k, Dims d, float* sa);

// out[c] = h[c] * (ca[c] * s + 1) for one pixel's C channels (out may be h).
inline void gate_pixel(const float* h, const float* ca, float s, int64_t C, float* out) {
  const Vec vs(s), one(1.f);
  int64_t c = 0;
  for (; c + kVec <= C; c += kVec)
    (Vec::loadu(h + c) * at::vec::fmadd(Vec::loadu(ca + c), vs, one)).store(out + c);
  for (; c < C; ++c) out[c] = h[c] * (ca[c] * s + 1.f);
}

}  // namespace hdkd::cpu
