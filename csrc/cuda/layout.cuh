// How the CUDA kernels address their B x C x H x W tensors in any memory format (Layout,
// PixelWalk), and the memory format of the outputs they allocate.
#pragma once

#include "cuda/divisor.cuh"
#include "cuda/launch.cuh"
#include "output_format.h"

namespace hdkd::cuda {

// Sizes and element strides of a B x C x H x W tensor; any memory format, views included.
struct Layout {
  int64_t B, C, H, W;
  int64_t sb, sc, sh, sw;
  bool channels_last;  // the order in which elementwise kernels visit it (writes coalesce)
  bool dense;          // its elements fill memory in that order: offset == visiting index
  Divisor by_c, by_p, by_w;  // C, H * W, W

  HDKD_HOST_DEVICE int64_t P() const { return H * W; }
  HDKD_HOST_DEVICE int64_t at(int64_t b, int64_t c, int64_t p) const {
    return pixel(b, p) + c * sc;
  }
  HDKD_HOST_DEVICE int64_t at(int64_t b, int64_t c, int64_t y, int64_t x) const {
    return b * sb + c * sc + y * sh + x * sw;
  }
  HDKD_HOST_DEVICE int64_t pixel(int64_t b, int64_t p) const {  // offset of (b, channel 0, p)
    int64_t y, x;
    by_w.divmod(p, y, x);
    return b * sb + y * sh + x * sw;
  }
  // Element i of the visiting order as (b, c, p).
  HDKD_HOST_DEVICE void unravel(int64_t i, int64_t& b, int64_t& c, int64_t& p) const {
    int64_t q;
    if (channels_last) {
      by_c.divmod(i, q, c);
      by_p.divmod(q, b, p);
    } else {
      by_p.divmod(i, q, p);
      by_c.divmod(q, b, c);
    }
  }
  // The offset of element (b, c, p), which is element i of `order`'s visiting order: i itself
  // when this tensor is dense in that order (no index math).
  HDKD_HOST_DEVICE int64_t offset(const Layout& order, int64_t i, int64_t b, int64_t c,
                                  int64_t p) const {
    return dense && channels_last == order.channels_last ? i : at(b, c, p);
  }
};

Layout layout_of(const Tensor& t);

// (b, y, x) of the pixel rows t = b * H * W + y * W + x, t = t0, t0 + 1, ...: one division
// for the first, none after.
struct PixelWalk {
  int64_t b, y, x;
  HDKD_HOST_DEVICE PixelWalk(int64_t t0, const Layout& l) {
    int64_t p;
    l.by_p.divmod(t0, b, p);
    l.by_w.divmod(p, y, x);
  }
  HDKD_HOST_DEVICE void next(const Layout& l) {
    if (++x == l.W) {
      x = 0;
      if (++y == l.H) {
        y = 0;
        ++b;
      }
    }
  }
};

// Uninitialised outputs: of x's memory format as the op returns it (wants_channels_last), or
// float32 channels_last on like's device.
Tensor empty_like_input(const Tensor& x, at::IntArrayRef sizes, at::ScalarType dtype);
Tensor empty_nhwc_float(const Tensor& like, int64_t B, int64_t C, int64_t H, int64_t W);

}  // namespace hdkd::cuda
