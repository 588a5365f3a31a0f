// The library of the CUDA kernels compiled as C++ for the CPU (HDKD_CUDA_EMULATION: each launch
// is a loop over its indices): torch.ops.hdkd_cuda_emu.* with the hdkd:: schemas, and, under
// torch.ops.cuda_emu_testing (a namespace of their own, so that nothing takes them for model
// ops), the emulated launches' block cap and the divisor. tests/cuda_emulation/__init__.py
// builds it with every csrc/cuda/*.cu (each its own translation unit, as in the real build),
// whose kernels register on CPU tensors under hdkd_cuda_emu; CI tests their indexing and math
// without a GPU.
#include <ATen/ops/empty.h>

#include "cuda/divisor.cuh"
#include "cuda/launch.cuh"
#include "schemas.h"

TORCH_LIBRARY(hdkd_cuda_emu, m) { hdkd::define_schemas(m); }

TORCH_LIBRARY(cuda_emu_testing, m) {
  // Test only: the kernels' index division (csrc/cuda/divisor.cuh) as [n / d, n % d].
  m.def("divmod(Tensor n, int d) -> Tensor");
  // Test only: caps the emulated launches at `blocks` blocks (returns the previous cap), so that
  // the kernels' grid-stride loops take several trips on small tensors.
  m.def("set_max_blocks(int blocks) -> int");
}

namespace hdkd::cuda {

namespace {
int64_t emulated_max_blocks = int64_t(1) << 20;  // a GPU's cap (launch.cuh)
}  // namespace

int64_t max_blocks() { return emulated_max_blocks; }

int64_t set_emulated_max_blocks(int64_t blocks) {
  TORCH_CHECK(blocks >= 1, "set_max_blocks: blocks must be at least 1, got ", blocks);
  const int64_t previous = emulated_max_blocks;
  emulated_max_blocks = blocks;
  return previous;
}

}  // namespace hdkd::cuda

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

TORCH_LIBRARY_IMPL(cuda_emu_testing, CPU, m) { m.impl("divmod", &divmod); }
TORCH_LIBRARY_IMPL(cuda_emu_testing, CatchAll, m) {
  m.impl("set_max_blocks", &hdkd::cuda::set_emulated_max_blocks);
}
