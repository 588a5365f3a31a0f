// GELU, its derivative and sigmoid on floats and on Vec, for the CPU kernels.
#pragma once

#include <cmath>

#include "cpu/vec.h"

namespace hdkd::cpu {

inline float gelu(float z) { return 0.5f * z * (1.f + std::erf(z * float(M_SQRT1_2))); }
// GELU(x) = x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2. The AVX2 path spends about half the
// instructions of Vectorized::erf (Sleef's 1-ulp exp and a division): erf by Abramowitz-Stegun
// 7.1.26 (|error| <= 1.5e-7), exp(-a^2) by Cody-Waite reduction and a degree-6 polynomial
// (relative error ~1e-7), the reciprocal by rcp + one Newton step; Phi(x < 0) is computed as
// q / 2 directly, not as (1 - (1 - q)) / 2, so negative inputs keep their relative accuracy.
#if defined(CPU_CAPABILITY_AVX2)
inline __m256 exp_of_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
  __m256 p = _mm256_set1_ps(1.f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline Vec gelu(const Vec& v) {
  const __m256 x = v;
  // |x| / sqrt 2, capped where erfc underflows (so that GELU(+inf) = +inf, not NaN)
  const __m256 a = _mm256_min_ps(
      _mm256_andnot_ps(_mm256_set1_ps(-0.f), _mm256_mul_ps(x, _mm256_set1_ps(float(M_SQRT1_2)))),
      _mm256_set1_ps(10.f));
  const __m256 d = _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), a, _mm256_set1_ps(1.f));
  __m256 t = _mm256_rcp_ps(d);
  t = _mm256_mul_ps(t, _mm256_fnmadd_ps(d, t, _mm256_set1_ps(2.f)));
  __m256 poly = _mm256_set1_ps(1.061405429f);
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-1.453152027f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(1.421413741f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-0.284496736f));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(0.254829592f));
  poly = _mm256_mul_ps(poly, t);
  // q = 1 - erf(|x| / sqrt 2) = erfc(|x| / sqrt 2)
  const __m256 q = _mm256_mul_ps(poly, exp_of_nonpositive(_mm256_mul_ps(_mm256_mul_ps(a, a),
                                                                        _mm256_set1_ps(-1.f))));
  const __m256 upper = _mm256_sub_ps(_mm256_set1_ps(2.f), q);  // 2 Phi for x >= 0
  const __m256 twice_phi = _mm256_blendv_ps(upper, q, x);      // sign bit of x picks q
  return Vec(_mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.5f)), twice_phi));
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
