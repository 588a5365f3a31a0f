// Integer division by a value fixed before a launch, for the kernels' index math. The GPU has no
// integer divider: a 64-bit `n / d` by a runtime d compiles to about 20 instructions when both
// fit in 32 bits and a subroutine call otherwise, per division, per element. Here it is a 64-bit
// multiply-high, an add and a shift (Granlund & Montgomery's round-up method): with
// s = ceil(log2 d) and magic = floor(2^64 (2^s - d) / d) + 1,
//   n / d = (mulhi(n, magic) + n) >> s   for 0 <= n < 2^63;
// mulhi(n, magic) < n, so the sum does not overflow.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>

#include "host_device.h"

namespace hdkd::cuda {

class Divisor {
 public:
  Divisor() = default;
  // d = 0 (an empty dimension) is accepted for launches that have no element, and divides as 1.
  explicit Divisor(int64_t d) : d_(d) {
    TORCH_CHECK(d >= 0, "hdkd: internal error: Divisor(", d, ")");
    const uint64_t by = d > 0 ? uint64_t(d) : 1;
    while ((uint64_t(1) << shift_) < by) ++shift_;
    const unsigned __int128 excess = (uint64_t(1) << shift_) - by;  // < by
    magic_ = uint64_t((excess << 64) / by) + 1;
  }

  HDKD_HOST_DEVICE int64_t value() const { return d_; }
  // n / d for 0 <= n < 2^63.
  HDKD_HOST_DEVICE int64_t div(int64_t n) const {
    return int64_t((mulhi(uint64_t(n), magic_) + uint64_t(n)) >> shift_);
  }
  HDKD_HOST_DEVICE int64_t mod(int64_t n) const { return n - div(n) * d_; }
  // q = n / d and r = n % d.
  HDKD_HOST_DEVICE void divmod(int64_t n, int64_t& q, int64_t& r) const {
    q = div(n);
    r = n - q * d_;
  }

 private:
  HDKD_HOST_DEVICE static uint64_t mulhi(uint64_t a, uint64_t b) {
#ifdef __CUDA_ARCH__
    return __umul64hi(a, b);
#else
    return uint64_t((unsigned __int128)a * b >> 64);
#endif
  }

  int64_t d_ = 1;
  uint64_t magic_ = 1;
  uint32_t shift_ = 0;
};

}  // namespace hdkd::cuda
