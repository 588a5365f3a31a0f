// The depthwise conv shared by dwconv.cu and mbcsa.cu.
#pragma once

#include "cuda/common.cuh"

namespace hdkd::cuda {

// act(conv_kxk(x, w)[b, c, p] * scale[c] + shift[c]) in float32: depthwise, stride 1, zero
// padding k / 2; scale null means 1 (shift is then the conv bias), shift null means 0; act is
// GELU when apply_gelu, else the identity. w: float32 k*k x C (tap-major, so that neighbouring
// channels read neighbouring weights).
template <typename in_t>
struct DwconvValue {
  const in_t* x;
  Layout lx;
  const float* w;
  int64_t k;
  const float* scale;
  const float* shift;
  bool apply_gelu;

  HDKD_HD float operator()(int64_t b, int64_t c, int64_t p) const {
    const int64_t r = k / 2;
    int64_t y, xx;
    lx.by_w.divmod(p, y, xx);
    float acc = 0.f;
    for (int64_t ky = 0; ky < k; ++ky) {
      const int64_t iy = y + ky - r;
      if (iy < 0 || iy >= lx.H) continue;
      for (int64_t kx = 0; kx < k; ++kx) {
        const int64_t ix = xx + kx - r;
        if (ix >= 0 && ix < lx.W)
          acc += static_cast<float>(x[lx.at(b, c, iy, ix)]) * w[(ky * k + kx) * lx.C + c];
      }
    }
    if (scale) acc *= scale[c];
    if (shift) acc += shift[c];
    return apply_gelu ? gelu(acc) : acc;
  }
};

// y = the values above for every element; x any layout and float dtype; y the same dtype as x or
// float32, any layout; scale / shift float32 contiguous or undefined.
void dwconv(const Tensor& x, const Tensor& w, const Tensor& scale, const Tensor& shift,
            bool apply_gelu, const Tensor& y);
// The same into y (x's dtype), written by the pass that takes the channel statistics of y as
// stored (rounded to its dtype, as torch.amax and mean would see it).
ChannelStats dwconv_and_stats(const Tensor& x, const Tensor& w, const Tensor& scale,
                              const Tensor& shift, bool apply_gelu, const Tensor& y);

}  // namespace hdkd::cuda
