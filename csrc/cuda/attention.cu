// CUDA kernel of the channel-spatial attention forward (hdkd::csa_forward):
//   out = h * (ca * sa + 1), ca = sigmoid(MLP(avg_p h) + MLP(max_p h)), sa = sigmoid(conv(pool_c u)).
// Any memory format (indexing by strides), float32 / float16 / bfloat16 with float32 math, on the
// current CUDA stream. The channel MLP (B x C, tiny) uses ATen's CUDA ops.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sigmoid.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cfloat>
#include <tuple>

namespace hdkd::cuda {
namespace {

using at::Tensor;

struct Shape {
  int64_t B, C, H, W;
  int64_t sb, sc, sh, sw;  // element strides of h (and of out, which is allocated alike)
};

__device__ __forceinline__ int64_t at_(const Shape& s, int64_t b, int64_t c, int64_t p) {
  return b * s.sb + c * s.sc + (p / s.W) * s.sh + (p % s.W) * s.sw;
}

constexpr int kThreads = 256;

// One block per (b, c): sum and max over the H*W pixels.
template <typename scalar_t>
__global__ void channel_stats(const scalar_t* __restrict__ h, Shape s, float* __restrict__ avg,
                              float* __restrict__ mx) {
  const int64_t bc = blockIdx.x, b = bc / s.C, c = bc % s.C, P = s.H * s.W;
  float sum = 0.f, m = -FLT_MAX;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    const float v = static_cast<float>(h[at_(s, b, c, p)]);
    sum += v;
    m = fmaxf(m, v);
  }
  __shared__ float ssum[kThreads], smax[kThreads];
  ssum[threadIdx.x] = sum;
  smax[threadIdx.x] = m;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      ssum[threadIdx.x] += ssum[threadIdx.x + stride];
      smax[threadIdx.x] = fmaxf(smax[threadIdx.x], smax[threadIdx.x + stride]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    avg[bc] = ssum[0] / float(P);
    mx[bc] = smax[0];
  }
}

// One thread per pixel: mean and max over channels of u = h * ca.
template <typename scalar_t>
__global__ void channel_pool(const scalar_t* __restrict__ h, Shape s, const float* __restrict__ ca,
                             float* __restrict__ pooled) {
  const int64_t P = s.H * s.W, i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= s.B * P) return;
  const int64_t b = i / P, p = i % P;
  float sum = 0.f, m = -FLT_MAX;
  for (int64_t c = 0; c < s.C; ++c) {
    const float u = static_cast<float>(h[at_(s, b, c, p)]) * ca[b * s.C + c];
    sum += u;
    m = fmaxf(m, u);
  }
  pooled[(b * 2) * P + p] = sum / float(s.C);
  pooled[(b * 2 + 1) * P + p] = m;
}

// One thread per pixel: sa = sigmoid(conv_kxk(pooled)), zero padding k / 2.
__global__ void spatial_gate(const float* __restrict__ pooled, const float* __restrict__ w, int k,
                             Shape s, float* __restrict__ sa) {
  const int64_t P = s.H * s.W, i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= s.B * P) return;
  const int64_t b = i / P, y = (i % P) / s.W, x = i % s.W, r = k / 2;
  float acc = 0.f;
  for (int ch = 0; ch < 2; ++ch)
    for (int ky = 0; ky < k; ++ky) {
      const int64_t iy = y + ky - r;
      if (iy < 0 || iy >= s.H) continue;
      for (int kx = 0; kx < k; ++kx) {
        const int64_t ix = x + kx - r;
        if (ix >= 0 && ix < s.W)
          acc += pooled[(b * 2 + ch) * P + iy * s.W + ix] * w[(ch * k + ky) * k + kx];
      }
    }
  sa[i] = 1.f / (1.f + __expf(-acc));
}

// One thread per element: out = h * (ca * sa + 1).
template <typename scalar_t>
__global__ void apply_gates(const scalar_t* __restrict__ h, Shape s, const float* __restrict__ ca,
                            const float* __restrict__ sa, scalar_t* __restrict__ out) {
  const int64_t P = s.H * s.W, n = s.B * s.C * P;
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t b = i / (s.C * P), c = (i / P) % s.C, p = i % P, off = at_(s, b, c, p);
  const float v = static_cast<float>(h[off]);
  out[off] = static_cast<scalar_t>(v * (ca[b * s.C + c] * sa[b * P + p] + 1.f));
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

std::tuple<Tensor, Tensor, Tensor> csa_forward(const Tensor& h_in, const Tensor& fc1,
                                               const Tensor& fc2, const Tensor& sa_weight) {
  TORCH_CHECK(h_in.dim() == 4, "hdkd::csa_forward: expected h to be 4-D, got shape ",
              h_in.sizes());
  TORCH_CHECK(fc1.device() == h_in.device() && fc2.device() == h_in.device() &&
                  sa_weight.device() == h_in.device(),
              "hdkd::csa_forward: expected every weight on ", h_in.device());
  const c10::cuda::CUDAGuard guard(h_in.device());
  // the channel MLP below must run in float32 even under torch.autocast
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const bool cl = h_in.is_contiguous(at::MemoryFormat::ChannelsLast) && !h_in.is_contiguous();
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const Tensor h = h_in.contiguous(fmt);
  Tensor out = at::empty(h.sizes(), h.options(), fmt);
  const Shape s{h.size(0), h.size(1), h.size(2), h.size(3),
                h.stride(0), h.stride(1), h.stride(2), h.stride(3)};
  const int64_t P = s.H * s.W;
  const auto fopts = h.options().dtype(at::kFloat);
  Tensor avg = at::empty({s.B, s.C}, fopts), mx = at::empty({s.B, s.C}, fopts);
  Tensor pooled = at::empty({s.B, 2, s.H, s.W}, fopts), sa = at::empty({s.B, s.H, s.W}, fopts);
  const Tensor w1 = fc1.to(at::kFloat).reshape({fc1.size(0), s.C});
  const Tensor w2 = fc2.to(at::kFloat).reshape({s.C, fc1.size(0)});
  const Tensor saw = sa_weight.to(at::kFloat).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "hdkd_csa_forward",
                                  [&] {
    channel_stats<scalar_t><<<static_cast<unsigned>(s.B * s.C), kThreads, 0, stream>>>(
        h.data_ptr<scalar_t>(), s, avg.data_ptr<float>(), mx.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  auto mlp = [&](const Tensor& v) { return at::mm(at::gelu(at::mm(v, w1.t())), w2.t()); };
  const Tensor ca = at::sigmoid(mlp(avg).add_(mlp(mx))).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "hdkd_csa_forward",
                                  [&] {
    channel_pool<scalar_t><<<blocks_for(s.B * P), kThreads, 0, stream>>>(
        h.data_ptr<scalar_t>(), s, ca.data_ptr<float>(), pooled.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    spatial_gate<<<blocks_for(s.B * P), kThreads, 0, stream>>>(
        pooled.data_ptr<float>(), saw.data_ptr<float>(), static_cast<int>(saw.size(-1)), s,
        sa.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    apply_gates<scalar_t><<<blocks_for(s.B * s.C * P), kThreads, 0, stream>>>(
        h.data_ptr<scalar_t>(), s, ca.data_ptr<float>(), sa.data_ptr<float>(),
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, ca, sa};
}

}  // namespace

TORCH_LIBRARY_IMPL(hdkd, CUDA, m) { m.impl("csa_forward", &csa_forward); }

}  // namespace hdkd::cuda
