// The CUDA kernels of csrc/cuda compiled as C++ for the CPU (HDKD_CUDA_EMULATION: each launch is
// a loop over its indices), registered as torch.ops.hdkd_cuda_emu.* on CPU tensors with the
// hdkd:: schemas. Built by tests/cuda_emulation/__init__.py; lets CI test the kernels' indexing
// and math without a GPU.
#include "schemas.h"

TORCH_LIBRARY(hdkd_cuda_emu, m) { hdkd::define_schemas(m); }

#include "cuda/common.cu"
#include "cuda/attention.cu"
#include "cuda/dwconv.cu"
#include "cuda/mbcsa.cu"
