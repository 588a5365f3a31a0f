// The spatial gate's k x k 2 -> 1 conv at one pixel, shared by the CPU and CUDA kernels (host and
// device code): planes are float32 B x 2 x H x W (pooled) or B x H x W (dpre), w is 1 x 2 x k x k.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace hdkd {

// conv(pooled)[b, y, x] with zero padding k / 2 (the logit of sa).
HDKD_HOST_DEVICE inline float spatial_gate_logit(const float* pooled, const float* w, int64_t k,
                                                 int64_t H, int64_t W, int64_t b, int64_t y,
                                                 int64_t x) {
  const int64_t r = k / 2;
  float acc = 0.f;
  for (int64_t ch = 0; ch < 2; ++ch)
    for (int64_t ky = 0; ky < k; ++ky) {
      const int64_t iy = y + ky - r;
      if (iy < 0 || iy >= H) continue;
      for (int64_t kx = 0; kx < k; ++kx) {
        const int64_t ix = x + kx - r;
        if (ix >= 0 && ix < W)
          acc += pooled[((b * 2 + ch) * H + iy) * W + ix] * w[(ch * k + ky) * k + kx];
      }
    }
  return acc;
}

// d(loss)/d(pooled[b, ch, y, x]) from dpre = d(loss)/d(logit): the flipped-kernel conv of dpre.
HDKD_HOST_DEVICE inline float spatial_gate_input_grad(const float* dpre, const float* w,
                                                      int64_t k, int64_t H, int64_t W, int64_t b,
                                                      int64_t ch, int64_t y, int64_t x) {
  const int64_t r = k / 2;
  float acc = 0.f;
  for (int64_t ky = 0; ky < k; ++ky) {
    const int64_t oy = y - ky + r;
    if (oy < 0 || oy >= H) continue;
    for (int64_t kx = 0; kx < k; ++kx) {
      const int64_t ox = x - kx + r;
      if (ox >= 0 && ox < W) acc += dpre[(b * H + oy) * W + ox] * w[(ch * k + ky) * k + kx];
    }
  }
  return acc;
}

}  // namespace hdkd
