// The calling thread's kept buffers (scratch.h).
#include "cpu/scratch.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <vector>

namespace hdkd::cpu {
namespace {

struct ThreadBuffers {
  std::vector<at::Tensor> bytes;
  bool in_use = false;
};
thread_local ThreadBuffers kept;

}  // namespace

Scratch::Scratch() : owner_(!kept.in_use) { kept.in_use = true; }

Scratch::~Scratch() {
  if (owner_) kept.in_use = false;
}

at::Tensor Scratch::matrix(int64_t rows, int64_t cols, at::ScalarType dtype) {
  const auto opts = at::TensorOptions().dtype(dtype);
  if (!owner_) return at::empty({rows, cols}, opts);
  const int64_t nbytes = rows * cols * int64_t(c10::elementSize(dtype));
  if (next_ == kept.bytes.size()) kept.bytes.emplace_back();
  at::Tensor& buf = kept.bytes[next_++];
  if (!buf.defined() || int64_t(buf.nbytes()) < nbytes)
    buf = at::empty({nbytes}, opts.dtype(at::kByte));
  return at::from_blob(buf.data_ptr(), {rows, cols}, opts);
}

}  // namespace hdkd::cpu
