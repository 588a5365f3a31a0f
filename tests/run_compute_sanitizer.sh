#!/usr/bin/env bash
# The CUDA kernel tests under compute-sanitizer's memcheck and racecheck (a GPU machine with the
# package installed; run from the repository root; -P keeps the checkout's hdkd/ from shadowing the
# installed package). Any reported error fails the script.
set -euo pipefail
tests=(tests/test_ext_cuda_kernels.py -k "not emulated and not realistic" -q -p no:cacheprovider)
for tool in memcheck racecheck; do
  echo "== compute-sanitizer --tool $tool"
  compute-sanitizer --tool "$tool" --error-exitcode 1 --target-processes all \
    python3 -P -m pytest "${tests[@]}"
done
