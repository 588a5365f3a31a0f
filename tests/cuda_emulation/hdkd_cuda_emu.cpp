// The CUDA kernels of csrc/cuda compiled as C++ for the CPU (HDKD_CUDA_EMULATION: each launch is
// a loop over its indices), registered as torch.ops.hdkd_cuda_emu.* on CPU tensors with the
// hdkd:: schemas. Built by tests/cuda_emulation/__init__.py; lets CI test the kernels' indexing
// and math without a GPU.
#include "schemas.h"

TORCH_LIBRARY(hdkd_cuda_emu, m) {
  hdkd::define_schemas(m);
  // Test only: the kernels' index division (csrc/cuda/divisor.cuh) as [n / d, n % d].
  m.def("divmod(Tensor n, int d) -> Tensor");
}

#include "cuda/common.cu"
#include "cuda/attention.cu"
#include "cuda/dwconv.cu"
#include "cuda/mbcsa.cu"

namespace {

at::Tensor divmod(const at::Tensor& n, int64_t d) {
  TORCH_CHECK(n.scalar_type() == at::kLong && n.dim() == 1, "divmod: expected a 1-D int64 n");
  const hdkd::cuda::Divisor by(d);
  const at::Tensor src = n.contiguous();
  at::Tensor out = at::empty({2, src.size(0)}, src.options());
  const int64_t* np = src.data_ptr<int64_t>();
  int64_t *q = out.data_ptr<int64_t>(), *r = q + src.size(0);
  for (int64_t i = 0; i < src.size(0); ++i) by.divmod(np[i], q[i], r[i]);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(hdkd_cuda_emu, CPU, m) { m.impl("divmod", &divmod); }
