// Input staging, output allocation and dtype rounding of the CPU kernels (staging.h).
#include "cpu/staging.h"

#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cpu/vec.h"

namespace hdkd::cpu {

Dims dims_of(const at::Tensor& x) {
  return {x.size(0), x.size(1), x.size(2), x.size(3), x.size(2) * x.size(3)};
}

at::Tensor nhwc_float(const at::Tensor& x) {
  return x.to(at::kFloat, false, false, at::MemoryFormat::ChannelsLast)
      .contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor float_contig(const at::Tensor& w) { return w.to(at::kFloat).contiguous(); }

at::Tensor empty_nhwc(int64_t B, int64_t C, int64_t H, int64_t W) {
  return at::empty({B, C, H, W}, at::TensorOptions().dtype(at::kFloat),
                   at::MemoryFormat::ChannelsLast);
}

at::Tensor like_input(const at::Tensor& r, const at::Tensor& x) {
  const auto fmt = wants_channels_last(x) ? at::MemoryFormat::ChannelsLast
                                          : at::MemoryFormat::Contiguous;
  return r.to(x.scalar_type(), false, false, fmt).contiguous(fmt);
}

namespace {

// v[0, n) through T and back to float, 2 * kVec values per step (round to nearest even, as
// c10's conversions and Tensor.to do).
template <typename T, class Narrow, class Widen>
void round_through(float* v, int64_t n, const Narrow& narrow, const Widen& widen) {
  int64_t i = 0;
  for (; i + 2 * kVec <= n; i += 2 * kVec) {
    const auto [lo, hi] = widen(narrow(Vec::loadu(v + i), Vec::loadu(v + i + kVec)));
    lo.store(v + i);
    hi.store(v + i + kVec);
  }
  for (; i < n; ++i) v[i] = static_cast<float>(T(v[i]));
}

}  // namespace

void round_to(at::ScalarType dtype, float* v, int64_t n) {
  if (dtype == at::kBFloat16)
    round_through<c10::BFloat16>(v, n, at::vec::convert_float_bfloat16,
                                 at::vec::convert_bfloat16_float);
  else if (dtype == at::kHalf)
    round_through<c10::Half>(v, n, at::vec::convert_float_half, at::vec::convert_half_float);
}

}  // namespace hdkd::cpu
