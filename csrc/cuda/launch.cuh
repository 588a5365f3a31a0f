// The CUDA kernels' launches (for_each_index, for_each_warp), the scope every op runs in
// (OpScope) and the macros that register and dispatch the ops.
//
// Every kernel is a lambda run once per index by for_each_index: one CUDA thread per index on
// the current stream, or, when these sources are compiled as C++ with HDKD_CUDA_EMULATION
// (tests/cuda_emulation), a plain loop on the CPU, so that the kernels' indexing and math are
// tested against the reference without a GPU. Each index writes only its own outputs and no
// index reads what another writes in the same launch (gathers and chunked reductions, no shared
// memory, no atomics): results do not depend on the schedule, which is also why the emulation
// cannot hide a race. Math is float32 whatever the tensors' dtype.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "host_device.h"

#ifdef HDKD_CUDA_EMULATION
#define HDKD_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(hdkd_cuda_emu, CPU, m)
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define HDKD_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(hdkd, CUDA, m)
#endif

// The dtypes the ops accept (float64 runs the reference in Python).
#define HDKD_DISPATCH(dtype, name, ...)                                              \
  AT_DISPATCH_SWITCH(dtype, name, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)          \
                         AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)                    \
                             AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace hdkd::cuda {

using at::Tensor;

// The launch shape of every kernel: kThreads threads per block and at most max_blocks() blocks.
// When an op has more indices than that (2^28 on a GPU), each thread takes several, a grid's
// width apart (grid_stride). The emulation runs the same loops over the same launch shape, and a
// test lowers its block cap so that they take several trips (set_emulated_max_blocks).
constexpr int kThreads = 256;
#ifdef HDKD_CUDA_EMULATION
int64_t max_blocks();
int64_t set_emulated_max_blocks(int64_t blocks);  // returns the previous cap
#else
inline int64_t max_blocks() { return int64_t(1) << 20; }
#endif

// Threads of the launch that runs `needed` threads' worth of work: whole blocks, capped.
inline int64_t launch_threads(int64_t needed) {
  return std::min<int64_t>((needed + kThreads - 1) / kThreads, max_blocks()) * kThreads;
}

// fn(i) for i = first, first + step, ... below n: one thread's share of a launch of `step` threads.
template <class F>
HDKD_HOST_DEVICE inline void grid_stride(int64_t first, int64_t step, int64_t n, const F& fn) {
  // Not unrolled: up to the block cap a thread takes one index, and unrolling would cost a 64-bit
  // software division (the trip count) per thread.
#ifdef __CUDA_ARCH__
#pragma unroll 1
#endif
  for (int64_t i = first; i < n; i += step) fn(i);
}

#ifndef HDKD_CUDA_EMULATION
__device__ inline int64_t global_thread() { return blockIdx.x * int64_t(blockDim.x) + threadIdx.x; }
__device__ inline int64_t grid_threads() { return int64_t(blockDim.x) * gridDim.x; }

template <class F>
__global__ void for_each_kernel(int64_t n, F fn) {
  grid_stride(global_thread(), grid_threads(), n, fn);
}
#endif

// fn(i) for every i in [0, n); launch errors raise (c10::Error, a RuntimeError in Python).
template <class F>
void for_each_index(int64_t n, const F& fn) {
  if (n <= 0) return;
  const int64_t threads = launch_threads(n);
#ifdef HDKD_CUDA_EMULATION
  for (int64_t t = 0; t < threads; ++t) grid_stride(t, threads, n, fn);
#else
  for_each_kernel<<<static_cast<unsigned>(threads / kThreads), kThreads, 0,
                    c10::cuda::getCurrentCUDAStream()>>>(n, fn);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

// One warp (kWarp lanes) per index, for a reduction along one row of contiguous values: lane
// `lane` computes its share partial(i, lane) (a struct of floats), the shares are combined by a
// butterfly (lane l takes combine(v_l, v_{l ^ m}) for m = 16, 8, 4, 2, 1), and finish(i, total)
// runs once per index. Warp w of the launch takes indices w, w + warps, ... The emulation runs
// the same butterfly, so results match bit for bit.
constexpr int kWarp = 32;

#ifndef HDKD_CUDA_EMULATION
template <class T>
__device__ T shfl_xor(T v, int mask) {
  static_assert(sizeof(T) % sizeof(float) == 0, "shfl_xor: a struct of floats");
  float* f = reinterpret_cast<float*>(&v);
#pragma unroll
  for (int k = 0; k < int(sizeof(T) / sizeof(float)); ++k)
    f[k] = __shfl_xor_sync(0xffffffffu, f[k], mask);
  return v;
}

// i is the same for all lanes of a warp, so every lane takes part in every shuffle.
template <class Partial, class Combine, class Finish>
__global__ void for_each_warp_kernel(int64_t n, Partial partial, Combine combine, Finish finish) {
  const int lane = threadIdx.x % kWarp;
  grid_stride(global_thread() / kWarp, grid_threads() / kWarp, n, [&](int64_t i) {
    auto v = partial(i, lane);
#pragma unroll
    for (int m = kWarp / 2; m > 0; m /= 2) v = combine(v, shfl_xor(v, m));
    if (lane == 0) finish(i, v);
  });
}
#endif

template <class Partial, class Combine, class Finish>
void for_each_warp(int64_t n, const Partial& partial, const Combine& combine,
                   const Finish& finish) {
  if (n <= 0) return;
  const int64_t threads = launch_threads(n * kWarp);
#ifdef HDKD_CUDA_EMULATION
  using T = decltype(partial(int64_t(0), 0));
  T v[kWarp], next[kWarp];
  const int64_t warps = threads / kWarp;
  for (int64_t w = 0; w < warps; ++w) {
    grid_stride(w, warps, n, [&](int64_t i) {
      for (int lane = 0; lane < kWarp; ++lane) v[lane] = partial(i, lane);
      for (int m = kWarp / 2; m > 0; m /= 2) {
        for (int lane = 0; lane < kWarp; ++lane) next[lane] = combine(v[lane], v[lane ^ m]);
        std::copy(next, next + kWarp, v);
      }
      finish(i, v[0]);
    });
  }
#else
  for_each_warp_kernel<<<static_cast<unsigned>(threads / kThreads), kThreads, 0,
                         c10::cuda::getCurrentCUDAStream()>>>(n, partial, combine, finish);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#endif
}

// Held by every op: its tensor's device is current, and the ATen ops called inside (mm, gelu,
// ...) compute in the given dtypes even under torch.autocast.
class OpScope {
 public:
#ifdef HDKD_CUDA_EMULATION
  explicit OpScope(const Tensor&) {}
#else
  explicit OpScope(const Tensor& t) : device_(t.device()) {}

 private:
  c10::cuda::CUDAGuard device_;
#endif
  c10::impl::ExcludeDispatchKeyGuard no_autocast_{c10::autocast_dispatch_keyset};
};

// v, which the compiler must then keep rather than recompute: NVVM rematerialises some values a
// loop uses from the loop's invariants, divisions included, once per iteration.
HDKD_HOST_DEVICE inline int64_t computed_once(int64_t v) {
#ifdef __CUDA_ARCH__
  asm("" : "+l"(v));
#endif
  return v;
}

}  // namespace hdkd::cuda
