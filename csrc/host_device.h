// HDKD_HOST_DEVICE marks the functions and kernel lambdas that run both on the GPU and on the host:
// __host__ __device__ under nvcc, nothing in C++ (the CPU kernels, and the CUDA sources compiled
// for the CPU by tests/cuda_emulation).
#pragma once

#ifdef __CUDACC__
#define HDKD_HOST_DEVICE __host__ __device__
#else
#define HDKD_HOST_DEVICE
#endif
