// The depthwise conv shared by dwconv.cu and mbcsa.cu.
#pragma once

#include <type_traits>

#include "cuda/channel_stats.cuh"
#include "cuda/layout.cuh"

namespace hdkd::cuda {

// f(std::integral_constant<int, K>()) for K = k (1, 3, 5 or 7): the kernels that take K as a
// template parameter unroll their K*K taps and keep the weights in registers.
template <class F>
void with_kernel_size(int64_t k, const F& f) {
  switch (k) {
    case 1: return f(std::integral_constant<int, 1>());
    case 3: return f(std::integral_constant<int, 3>());
    case 5: return f(std::integral_constant<int, 5>());
    case 7: return f(std::integral_constant<int, 7>());
    default: TORCH_CHECK(false, "hdkd: depthwise kernel size ", k, " is not 1, 3, 5 or 7");
  }
}

// f(ky, kx) for the taps of a K x K kernel centred on (y, x) that fall inside the H x W image, in
// row-major order; when all of them do (most pixels), the taps unroll without bounds checks.
template <int K, class F>
HDKD_HOST_DEVICE inline void for_each_tap(int64_t y, int64_t x, int64_t H, int64_t W, const F& f) {
  constexpr int R = K / 2;
  if (y >= R && y + R < H && x >= R && x + R < W) {
#pragma unroll
    for (int ky = 0; ky < K; ++ky)
#pragma unroll
      for (int kx = 0; kx < K; ++kx) f(ky, kx);
    return;
  }
#pragma unroll
  for (int ky = 0; ky < K; ++ky) {
    const int64_t iy = y + ky - R;
#pragma unroll
    for (int kx = 0; kx < K; ++kx) {
      const int64_t ix = x + kx - R;
      if (iy >= 0 && iy < H && ix >= 0 && ix < W) f(ky, kx);
    }
  }
}

// One channel's K x K depthwise conv (stride 1, zero padding K / 2): its weights, read once per
// thread from wt (float32 K*K x C, tap-major), and the conv at any pixel of one of its planes.
template <int K, typename in_t>
struct DwconvTaps {
  float w[K * K];
  int64_t H, W, sh, sw;

  HDKD_HOST_DEVICE DwconvTaps(const float* wt, int64_t c, const Layout& lx)
      : H(lx.H), W(lx.W), sh(lx.sh), sw(lx.sw) {
#pragma unroll
    for (int q = 0; q < K * K; ++q) w[q] = wt[q * lx.C + c];
  }

  // The conv at (y, x) of a plane (x's data at one (b, c)), in float32.
  HDKD_HOST_DEVICE float operator()(const in_t* plane, int64_t y, int64_t x) const {
    constexpr int R = K / 2;
    const in_t* centre = plane + y * sh + x * sw;
    float acc = 0.f;
    for_each_tap<K>(y, x, H, W, [&](int ky, int kx) {
      acc += static_cast<float>(centre[(ky - R) * sh + (kx - R) * sw]) * w[ky * K + kx];
    });
    return acc;
  }
};

// y = GELU(conv_kxk(x, w) * scale + shift) (scale undefined: 1; shift: float32 C), written by the
// pass that takes the channel statistics of y as stored (rounded to its dtype, as torch.amax and
// mean would see it). x any layout and float dtype, w C x 1 x k x k with k in {1, 3, 5, 7}; y of
// x's dtype, any layout.
ChannelStats dwconv_gelu_and_stats(const Tensor& x, const Tensor& w, const Tensor& scale,
                                   const Tensor& shift, const Tensor& y);

}  // namespace hdkd::cuda
