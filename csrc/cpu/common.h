// Shared pieces of the CPU kernels: float32 channels_last staging, output layout, vectorised
// GELU/sigmoid, per-channel statistics and the channel-spatial attention gates used by both
// attention.cpp and mbcsa.cpp.
//
// Every kernel computes in float32 on B x H x W x C (channels_last) buffers: bfloat16/float16
// inputs are widened once on entry and the result narrowed once on exit.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cmath>
#include <cstdint>

namespace hdkd::cpu {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kVec = Vec::size();
constexpr int64_t kChunk = 256;  // pixels per parallel task

// Held by every kernel: the ATen ops called inside (mm, gelu, ...) must compute in float32 even
// when the caller runs under torch.autocast.
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

struct Dims {
  int64_t B, C, H, W, P;  // P = H * W
};
Dims dims_of(const at::Tensor& x);

void check_input(const char* op, const char* name, const at::Tensor& t, int64_t dim);
at::Tensor nhwc_float(const at::Tensor& x);    // float32 channels_last (no copy when already)
at::Tensor float_contig(const at::Tensor& w);  // float32 contiguous
at::Tensor empty_nhwc(int64_t B, int64_t C, int64_t H, int64_t W);
// The ops return channels_last exactly when their input is channels_last and not also contiguous.
bool wants_channels_last(const at::Tensor& x);
// A float32 channels_last result in the dtype and memory format the op returns for input x.
at::Tensor like_input(const at::Tensor& r, const at::Tensor& x);
// v[0, n) rounded to dtype (kept as float32): what a tensor of that dtype would store.
void round_to(at::ScalarType dtype, float* v, int64_t n);

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

// Task-local per-channel running sum, max and number of values tied at the max (torch.amax
// splits its gradient evenly among them); a NaN value makes the max NaN, as in torch.amax.
struct ChannelAcc {
  float* sum;
  float* max;
  float* ties;
  int64_t C;
  void reset() const;
  void add(const float* v) const;  // one pixel's C values
};

// Per-task partial statistics: `tasks` rows of ChannelAcc, combined per image in task order.
struct ChannelPartials {
  ChannelPartials(int64_t tasks, int64_t C);
  ChannelAcc row(int64_t task) const;
  // Images own consecutive runs of tasks_per_image tasks; writes B x C sum, max, ties (any may
  // be null).
  void combine(int64_t B, int64_t tasks_per_image, float* sum, float* max, float* ties) const;
  at::Tensor buf;
  int64_t C;
};

// at::parallel_for over (image, chunk of kChunk pixels): fn(b, p0, p1, task).
template <class F>
void for_pixel_chunks(int64_t B, int64_t P, const F& fn);
int64_t chunks_per_image(int64_t P);

// Channel-spatial attention pieces on float32 B x P x C data.
// pooled[b, 0|1, p] = mean|max over c of u = h[b, p, c] * ca[b, c]   (pooled: B x 2 x H x W);
// ties (when not null, B x H*W): the number of channels whose u equals the max.
void channel_pool(const float* h, const float* ca, Dims d, float* pooled, float* ties);
// sa[b, p] = sigmoid(conv_kxk(pooled)[b, p]) with sa_weight 1 x 2 x k x k (float32 contiguous).
void spatial_gate(const float* pooled, const float* w, int64_t k, Dims d, float* sa);

}  // namespace hdkd::cpu

#include "cpu/common_inl.h"
