// GELU, its derivative and sigmoid in float32, for the CUDA kernels (host and device code).
#pragma once

#include <cmath>

#include "host_device.h"

namespace hdkd::cuda {

HDKD_HOST_DEVICE inline float gelu(float z) {
  return 0.5f * z * (1.f + erff(z * 0.70710678118654752f));
}
HDKD_HOST_DEVICE inline float gelu_grad(float z) {
  return 0.5f * (1.f + erff(z * 0.70710678118654752f)) +
         z * expf(-0.5f * z * z) * 0.39894228040143268f;
}
HDKD_HOST_DEVICE inline float sigmoid(float z) { return 1.f / (1.f + expf(-z)); }

}  // namespace hdkd::cuda
