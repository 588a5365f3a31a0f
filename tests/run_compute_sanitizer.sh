#!/usr/bin/env bash
# The CUDA kernel tests under compute-sanitizer's memcheck and racecheck (a GPU machine with the
# package installed; run from the repository root; -P keeps the checkout's hdkd/ from shadowing the
# installed package). Any reported error fails the script.
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
tests=(tests/test_ext_cuda_kernels.py -k "not emulated and not realistic" -q -p no:cacheprovider)
for tool in memcheck racecheck; do
  echo "== compute-sanitizer --tool $tool"
  "$sanitizer" --tool "$tool" --error-exitcode 1 --target-processes all \
    python3 -P -m pytest "${tests[@]}"
done
