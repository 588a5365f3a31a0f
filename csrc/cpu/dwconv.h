// Depthwise k x k convolution (stride 1, padding k / 2) on float32 B x H x W x C buffers.
#pragma once

#include <ATen/core/Tensor.h>

#include "cpu/channel_stats.h"
#include "cpu/staging.h"
#include "dwconv_weights.h"

namespace hdkd::cpu {

// y = GELU(conv(x, w) * scale + shift) (scale may be null: 1), rounded to the dtype y will be
// stored in, and per-channel statistics of y in `parts` (one row per for_pixel_chunks task).
// wt: k*k x C (tap-major), x, y: B x P x C.
void dwconv_affine_gelu(const float* x, const float* wt, const float* scale, const float* shift,
                        int64_t k, Dims d, at::ScalarType stored, float* y,
                        const ChannelPartials& parts);

}  // namespace hdkd::cpu
