// 16-byte vector loads and stores of eight neighbouring channels (Pack), for the element-wise
// kernels' path on dense channels_last tensors.
#pragma once

#include <cstdint>
#include <cstring>
#include <initializer_list>

#include "cuda/launch.cuh"

namespace hdkd::cuda {

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
HDKD_HOST_DEVICE inline void load_pack(const T* p, float (&out)[kPack]) {
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
HDKD_HOST_DEVICE inline void store_pack(T* p, const float (&in)[kPack]) {
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
inline bool packs_of_8(std::initializer_list<Tensor> maps,
                       std::initializer_list<Tensor> channel_vecs) {
  auto aligned = [](const Tensor& t) {
    return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  };
  for (const Tensor& t : maps)
    if (!t.is_contiguous(at::MemoryFormat::ChannelsLast) || t.size(1) % kPack != 0 || !aligned(t))
      return false;
  for (const Tensor& t : channel_vecs)
    if (t.defined() && (!t.is_contiguous() || !aligned(t))) return false;
  return true;
}

}  // namespace hdkd::cuda
