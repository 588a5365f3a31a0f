// How the CPU kernels take their inputs and return their outputs. Every kernel computes in
// float32 on B x H x W x C (channels_last) buffers: bfloat16/float16 inputs are widened once on
// entry and the result narrowed once on exit, in the dtype and memory format of the input
// (mbcsa.cpp's GEMMs alone multiply bfloat16 inputs in bfloat16: see there).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cstdint>

#include "output_format.h"

namespace hdkd::cpu {

// Held by every kernel: the ATen ops called inside (mm, gelu, ...) must compute in float32 even
// when the caller runs under torch.autocast.
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

struct Dims {
  int64_t B, C, H, W, P;  // P = H * W
};
Dims dims_of(const at::Tensor& x);

at::Tensor nhwc_float(const at::Tensor& x);    // float32 channels_last (no copy when already)
at::Tensor float_contig(const at::Tensor& w);  // float32 contiguous
at::Tensor empty_nhwc(int64_t B, int64_t C, int64_t H, int64_t W);
// A float32 channels_last result in the dtype and memory format the op returns for input x.
at::Tensor like_input(const at::Tensor& r, const at::Tensor& x);
// v[0, n) rounded to dtype (kept as float32): what a tensor of that dtype would store.
void round_to(at::ScalarType dtype, float* v, int64_t n);

}  // namespace hdkd::cpu
