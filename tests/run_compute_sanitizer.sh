#!/usr/bin/env bash
# The CUDA kernel tests under compute-sanitizer (a GPU machine with the package already installed,
# ideally built with HDKD_CUDA_LINEINFO=1 so reports name source lines; nothing is built here).
# Run from the repository root; -P keeps the checkout's hdkd/ from shadowing the installed package.
#   memcheck   out-of-bounds and misaligned accesses; PYTORCH_NO_CUDA_MEMORY_CACHING=1 gives every
#              tensor its own allocation, so an overrun past a tensor is not hidden inside a
#              cached block
#   initcheck  reads of device memory never written
#   synccheck  the warp shuffles' masks (csrc/cuda/launch.cuh); racecheck is left out: the
#              kernels use no shared memory
# HDKD_SANITIZER_BUDGET_S (default 540) bounds the whole run, split evenly over the tools, so the
# script fits one 10-minute command; a tool cut short fails the run. Any reported error fails it.
set -euo pipefail
sanitizer=$(command -v compute-sanitizer || true)
for dir in "${CUDA_HOME:-}" /usr/local/cuda; do
  if [ -z "$sanitizer" ] && [ -x "$dir/bin/compute-sanitizer" ]; then
    sanitizer="$dir/bin/compute-sanitizer"
  fi
done
if [ -z "$sanitizer" ]; then
  echo "compute-sanitizer not found on PATH, in \$CUDA_HOME/bin or /usr/local/cuda/bin" >&2
  exit 2
fi
tools=(memcheck initcheck synccheck)
budget=${HDKD_SANITIZER_BUDGET_S:-540}
per_tool=$(( budget / ${#tools[@]} ))
tests=(tests/test_ext_cuda_kernels.py -k "not emulated and not realistic" -q -p no:cacheprovider)
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
status=0
for tool in "${tools[@]}"; do
  echo "== compute-sanitizer --tool $tool (at most ${per_tool} s)"
  extra=()
  if [ "$tool" = memcheck ]; then extra=(--leak-check full); fi
  if ! timeout "$per_tool" "$sanitizer" --tool "$tool" "${extra[@]}" --error-exitcode 1 \
      --show-backtrace device --target-processes all python3 -P -m pytest "${tests[@]}"; then
    echo "== $tool: FAILED (an error was reported, or it ran past ${per_tool} s)" >&2
    status=1
  fi
done
exit $status
