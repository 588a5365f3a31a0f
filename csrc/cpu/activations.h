// GELU, its derivative and sigmoid on floats and on Vec, for the CPU kernels.
#pragma once

#include <cmath>

#include "cpu/vec.h"

namespace hdkd::cpu {

inline float gelu(float z) { return 0.5f * z * (1.f + std::erf(z * float(M_SQRT1_2))); }
// GELU(x) = x / 2 + x / 2 * erf(x / sqrt 2). The AVX2 path takes erf from a rational function,
// z P(z^2) / Q(z^2) with z clamped to [-3.92, 3.92] (float32's erf is +-1 beyond 3.83), fitted
// by tools/fit_erf.py (|error| <= 4.3e-8 in exact arithmetic), and 1 / Q by rcp and one Newton
// step: about 20 instructions per 8 values, 0.47 ns per value against 0.69 for the
// Abramowitz-Stegun erf with an exp it replaced (one core of the dev machine), and the GELU was a
// third of an MBCSA block's time at batch 1. Measured over [-12, 12]: |error| <= 1.1e-6,
// relative error <= 2e-7 for x > 0. Below about x = -3 the result is a small difference of
// x / 2 and x / 2 * erf and loses relative accuracy, as ATen's GELU does.
#if defined(CPU_CAPABILITY_AVX2)
inline Vec gelu(const Vec& v) {
  const __m256 x = v, limit = _mm256_set1_ps(3.92f);
  __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(float(M_SQRT1_2)));
  z = _mm256_min_ps(_mm256_max_ps(z, _mm256_sub_ps(_mm256_setzero_ps(), limit)), limit);
  const __m256 t = _mm256_mul_ps(z, z);
  __m256 p = _mm256_set1_ps(1.992146566e-08f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.994306254e-06f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.489876264e-04f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(3.972918567e-03f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(5.139734697e-02f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(2.061147769e-01f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.128378777e+00f));
  __m256 q = _mm256_set1_ps(1.024131210e-03f);
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(1.488926507e-02f));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(1.175647843e-01f));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(5.159932300e-01f));
  q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(1.f));
  __m256 r = _mm256_rcp_ps(q);
  r = _mm256_mul_ps(r, _mm256_fnmadd_ps(q, r, _mm256_set1_ps(2.f)));
  const __m256 erf = _mm256_min_ps(_mm256_mul_ps(_mm256_mul_ps(z, p), r), _mm256_set1_ps(1.f));
  const __m256 half_x = _mm256_mul_ps(x, _mm256_set1_ps(0.5f));
  return Vec(_mm256_fmadd_ps(half_x, erf, half_x));
}
#else
inline Vec gelu(const Vec& z) {
  return Vec(0.5f) * z * (Vec(1.f) + (z * Vec(float(M_SQRT1_2))).erf());
}
#endif
inline float gelu_grad(float z) {
  return 0.5f * (1.f + std::erf(z * float(M_SQRT1_2))) +
         z * std::exp(-0.5f * z * z) * float(0.5 * M_2_SQRTPI * M_SQRT1_2);
}
inline Vec gelu_grad(const Vec& z) {
  Vec cdf = Vec(0.5f) * (Vec(1.f) + (z * Vec(float(M_SQRT1_2))).erf());
  Vec pdf = (Vec(-0.5f) * z * z).exp() * Vec(float(0.5 * M_2_SQRTPI * M_SQRT1_2));
  return cdf + z * pdf;
}
inline float sigmoid(float z) { return 1.f / (1.f + std::exp(-z)); }

}  // namespace hdkd::cpu
