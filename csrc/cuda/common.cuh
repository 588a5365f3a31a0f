// Shared pieces of the CUDA kernels (attention.cu, dwconv.cu, mbcsa.cu).
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
#include <ATen/ops/empty.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>

#include "cuda/divisor.cuh"
#include "max_with_ties.h"

#ifdef HDKD_CUDA_EMULATION
#define HDKD_HD
#define HDKD_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(hdkd_cuda_emu, CPU, m)
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define HDKD_HD __host__ __device__
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
HDKD_HD inline void grid_stride(int64_t first, int64_t step, int64_t n, const F& fn) {
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

// Sizes and element strides of a B x C x H x W tensor; any memory format, views included.
struct Layout {
  int64_t B, C, H, W;
  int64_t sb, sc, sh, sw;
  bool channels_last;  // the order in which elementwise kernels visit it (writes coalesce)
  bool dense;          // its elements fill memory in that order: offset == visiting index
  Divisor by_c, by_p, by_w;  // C, H * W, W

  HDKD_HD int64_t P() const { return H * W; }
  HDKD_HD int64_t at(int64_t b, int64_t c, int64_t p) const { return pixel(b, p) + c * sc; }
  HDKD_HD int64_t at(int64_t b, int64_t c, int64_t y, int64_t x) const {
    return b * sb + c * sc + y * sh + x * sw;
  }
  HDKD_HD int64_t pixel(int64_t b, int64_t p) const {  // offset of (b, channel 0, p)
    int64_t y, x;
    by_w.divmod(p, y, x);
    return b * sb + y * sh + x * sw;
  }
  // Element i of the visiting order as (b, c, p).
  HDKD_HD void unravel(int64_t i, int64_t& b, int64_t& c, int64_t& p) const {
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
  HDKD_HD int64_t offset(const Layout& order, int64_t i, int64_t b, int64_t c, int64_t p) const {
    return dense && channels_last == order.channels_last ? i : at(b, c, p);
  }
};

Layout layout_of(const Tensor& t);

// Eight neighbouring channels of one pixel, moved as 16-byte vectors (two for float32): the path
// of the element-wise kernels when the tensors they stream are dense channels_last with
// C % 8 == 0 and 16-byte aligned (packs_of_8), so that every pack is aligned. Index math then
// runs once per 8 elements.
constexpr int kPack = 8;
template <typename T>
struct alignas(16) Pack {
  T v[kPack];
};

#ifdef HDKD_CUDA_EMULATION
// The emulation reads with memcpy, which any address allows; a GPU's 16-byte accesses do not, so
// the emulation insists on the alignment packs_of_8 promised.
#define HDKD_CHECK_PACK_ALIGNED(p) \
  TORCH_CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0, "hdkd: misaligned 16-byte pack access")
#else
#define HDKD_CHECK_PACK_ALIGNED(p)
#endif

template <typename T>
HDKD_HD inline void load_pack(const T* p, float (&out)[kPack]) {
  Pack<T> pack;
#ifdef __CUDA_ARCH__
  pack = *reinterpret_cast<const Pack<T>*>(p);
#else
  HDKD_CHECK_PACK_ALIGNED(p);
  std::memcpy(&pack, p, sizeof pack);
#endif
#pragma unroll
  for (int k = 0; k < kPack; ++k) out[k] = static_cast<float>(pack.v[k]);
}

template <typename T>
HDKD_HD inline void store_pack(T* p, const float (&in)[kPack]) {
  Pack<T> pack;
#pragma unroll
  for (int k = 0; k < kPack; ++k) pack.v[k] = static_cast<T>(in[k]);
#ifdef __CUDA_ARCH__
  // 16-byte stores spelled out: NVVM splits a struct or uint4 store of 16-bit values into 2- or
  // 4-byte stores
  constexpr int kWords = sizeof(Pack<T>) / sizeof(uint32_t);
  uint32_t w[kWords];
  memcpy(w, &pack, sizeof pack);
#pragma unroll
  for (int i = 0; i < kWords; i += 4) {
    char* dst = reinterpret_cast<char*>(p) + i * sizeof(uint32_t);
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "r"(w[i]),
                 "r"(w[i + 1]), "r"(w[i + 2]), "r"(w[i + 3])
                 : "memory");
  }
#else
  HDKD_CHECK_PACK_ALIGNED(p);
  std::memcpy(p, &pack, sizeof pack);
#endif
}

// Every 4-D tensor dense channels_last with C % 8 == 0, and every tensor 16-byte aligned (the
// per-channel float32 vectors read beside them, contiguous; undefined ones are skipped).
bool packs_of_8(std::initializer_list<Tensor> maps, std::initializer_list<Tensor> channel_vecs);

// The ops return channels_last exactly when their input is channels_last and not also contiguous.
bool wants_channels_last(const Tensor& x);
Tensor empty_like_input(const Tensor& x, at::IntArrayRef sizes, at::ScalarType dtype);
Tensor empty_nhwc_float(const Tensor& like, int64_t B, int64_t C, int64_t H, int64_t W);

void check_4d(const char* op, const char* name, const Tensor& t, const Tensor& x);
void check_channel_vec(const char* op, const char* name, const Tensor& t, int64_t C,
                       const Tensor& x);
// t is a tensor of exactly these sizes on x's device.
void check_sizes(const char* op, const char* name, const Tensor& t, at::IntArrayRef sizes,
                 const Tensor& x);

HDKD_HD inline float gelu(float z) { return 0.5f * z * (1.f + erff(z * 0.70710678118654752f)); }
HDKD_HD inline float gelu_grad(float z) {
  return 0.5f * (1.f + erff(z * 0.70710678118654752f)) +
         z * expf(-0.5f * z * z) * 0.39894228040143268f;
}
HDKD_HD inline float sigmoid(float z) { return 1.f / (1.f + expf(-z)); }

// v, which the compiler must then keep rather than recompute: NVVM rematerialises some values a
// loop uses from the loop's invariants, divisions included, once per iteration.
HDKD_HD inline int64_t computed_once(int64_t v) {
#ifdef __CUDA_ARCH__
  asm("" : "+l"(v));
#endif
  return v;
}

// Terms per partial sum of the chunked reductions.
constexpr int64_t kChunk = 256;

// out[j] = sum over t in [0, n) of term(j, t) for j in [0, m) (float32 out, on like's device):
// partial sums over chunks of kChunk terms in parallel, then each j's partials in chunk order.
// Consecutive j run in consecutive threads, so put the fastest-varying memory index in j.
template <class Term>
Tensor sum_terms(int64_t m, int64_t n, const Term& term, const Tensor& like);

// Per-(b, c) sum, max and the number of pixels equal to the max (torch.amax splits its gradient
// evenly among them), over the H*W pixels, float32 B x C: of t's values, or of row(p, y, x)
// for the pixels p = y * W + x of each plane, where row = row_of(b, c) is made once per thread
// and walks a chunk of pixels in order. A NaN value makes the max NaN, as in torch.amax.
struct ChannelStats {
  Tensor sum, max, ties;
};
ChannelStats channel_stats(const Tensor& t);
// The totals, in chunk order, of per-chunk partials: partial 3 x chunks*B*C (sum, max, ties;
// entry chunk * B*C + b * C + c) over chunks of kChunk pixels.
ChannelStats combine_channel_stats(const Tensor& partial, int64_t chunks, int64_t B, int64_t C);
template <class RowOf>
ChannelStats channel_stats_of(int64_t B, int64_t C, int64_t H, int64_t W, const RowOf& row_of,
                              const Tensor& like);

// (b, y, x) of the pixel rows t = b * H * W + y * W + x, t = t0, t0 + 1, ...: one division
// for the first, none after.
struct PixelWalk {
  int64_t b, y, x;
  HDKD_HD PixelWalk(int64_t t0, const Layout& l) {
    int64_t p;
    l.by_p.divmod(t0, b, p);
    l.by_w.divmod(p, y, x);
  }
  HDKD_HD void next(const Layout& l) {
    if (++x == l.W) {
      x = 0;
      if (++y == l.H) {
        y = 0;
        ++b;
      }
    }
  }
};

// The channel-spatial attention gates on h (B x C x H x W, any layout and dtype), ca B x C float32:
//   pooled[b, 0|1, p] = mean|max over c of u = h * ca (ties, when not null: B x H*W, the number of
//   channels whose u equals the max; gu, when g is given: B x H*W, sum over c of g * u, g laid
//   out like h or not, of h's dtype);
//   sa[b, p] = sigmoid(conv_kxk(pooled)) with sa_weight 1 x 2 x k x k.
Tensor channel_pool(const Tensor& h, const Tensor& ca, float* ties, const Tensor& g = Tensor(),
                    float* gu = nullptr);
Tensor spatial_gate(const Tensor& pooled, const Tensor& sa_weight);  // -> B x H x W float32
// h * (ca * sa + 1) into out (both laid out as described, may alias).
void apply_gates(const Tensor& h, const Tensor& ca, const Tensor& sa, const Tensor& out);

template <class Term>
Tensor sum_terms(int64_t m, int64_t n, const Term& term, const Tensor& like) {
  const int64_t chunks = std::max<int64_t>((n + kChunk - 1) / kChunk, 1);
  const auto opts = like.options().dtype(at::kFloat);
  Tensor partial = at::empty({chunks * m}, opts), out = at::empty({m}, opts);
  float* pp = partial.data_ptr<float>();
  const Divisor by_m(m);
  for_each_index(chunks * m, [=] HDKD_HD(int64_t i) {
    int64_t chunk, j;
    by_m.divmod(i, chunk, j);
    const int64_t t0 = chunk * kChunk, t1 = t0 + kChunk < n ? t0 + kChunk : n;
    float acc = 0.f;
    for (int64_t t = t0; t < t1; ++t) acc += term(j, t);
    pp[i] = acc;
  });
  float* op = out.data_ptr<float>();
  for_each_index(m, [=] HDKD_HD(int64_t j) {
    float acc = 0.f;
    for (int64_t ch = 0; ch < chunks; ++ch) acc += pp[ch * m + j];
    op[j] = acc;
  });
  return out;
}

// A running sum, and max with the number of values tied at it (a NaN value makes the max NaN).
struct SumMaxTies {
  float sum = 0.f, max = -INFINITY, ties = 0.f;
  HDKD_HD void add(float v) {
    sum += v;
    max_with_ties(v, 1.f, max, ties);
  }
  HDKD_HD static SumMaxTies merge(SumMaxTies a, const SumMaxTies& b) {
    a.sum += b.sum;
    max_with_ties(b.max, b.ties, a.max, a.ties);
    return a;
  }
};

template <class RowOf>
ChannelStats channel_stats_of(int64_t B, int64_t C, int64_t H, int64_t W, const RowOf& row_of,
                              const Tensor& like) {
  const int64_t P = H * W, m = B * C, chunks = std::max<int64_t>((P + kChunk - 1) / kChunk, 1);
  const auto f32 = like.options().dtype(at::kFloat);
  Tensor partial = at::empty({3, chunks * m}, f32);
  float* ps = partial.data_ptr<float>();
  float *pm = ps + chunks * m, *pt = pm + chunks * m;
  const Divisor by_m(m), by_c(C), by_w(W);
  for_each_index(chunks * m, [=] HDKD_HD(int64_t i) {
    int64_t chunk, j, b, c, y, x;
    by_m.divmod(i, chunk, j);
    by_c.divmod(j, b, c);
    const int64_t p0 = chunk * kChunk;
    const int64_t p1 = p0 + kChunk < P ? p0 + kChunk : P;
    by_w.divmod(p0, y, x);
    const auto row = row_of(computed_once(b), computed_once(c));
    SumMaxTies s;
    for (int64_t p = p0; p < p1; ++p) {
      s.add(row(p, y, x));
      if (++x == W) {
        x = 0;
        ++y;
      }
    }
    ps[i] = s.sum;
    pm[i] = s.max;
    pt[i] = s.ties;
  });
  return combine_channel_stats(partial, chunks, B, C);
}

}  // namespace hdkd::cuda
