// Vec: the CPU kernels' SIMD vector of floats (at::vec, built for AVX2 + FMA on x86-64).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>

namespace hdkd::cpu {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kVec = Vec::size();

}  // namespace hdkd::cpu
