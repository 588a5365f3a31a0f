// Temporary buffers of the CPU kernels that the calling thread keeps between calls.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>

namespace hdkd::cpu {

// A kernel's large temporaries (megabytes at batch 1) allocated afresh on every call are mapped
// from the OS and handed back to it on free, so each call page-faults them in again: over a
// third of an MBCSA block's time at batch 1 (benchmarks/NOTES.md). A Scratch hands out buffers
// that the calling thread keeps, each grown to the largest request it has served. Their memory
// stays with the thread until it exits. One Scratch per thread at a time: a second one on the
// same thread (a kernel called from inside another) gets fresh buffers.
class Scratch {
 public:
  Scratch();
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  // An uninitialised contiguous rows x cols tensor, valid while this Scratch lives.
  at::Tensor matrix(int64_t rows, int64_t cols, at::ScalarType dtype);

 private:
  bool owner_;       // holds this thread's buffers
  size_t next_ = 0;  // the next buffer to hand out
};

}  // namespace hdkd::cpu
