// HDKD_HOST_DEVICE marks the inline functions that both the CPU kernels (C++) and the CUDA kernels
// (device code) call.
#pragma once

#ifdef __CUDACC__
#define HDKD_HOST_DEVICE __host__ __device__
#else
#define HDKD_HOST_DEVICE
#endif
