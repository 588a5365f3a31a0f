#!/usr/bin/env bash
# The GPU checks of issues 4 and 5, in steps that each fit one 10-minute call of the lent GPU
# machine (bare at every start: no network, Python 3.12 with torch, triton, pytest,
# pytest-benchmark and timm; fvcore and its pure-Python needs travel as wheels in .whl/).
#
#   here, once:        bash benchmarks/gpu_session.sh wheels
#   on the GPU:        bash benchmarks/gpu_session.sh STEP [STEP ...]    (carry: .whl)
#
# Python runs with -P so that the checkout's hdkd/ (no compiled extension) never shadows the
# installed package. Every call on the GPU begins with `setup` (wheels onto PYTHONPATH, the package built for the
# GPU's own architecture only; skipped when this machine already has it). Steps, in the order
# NOTES.md plans them:
#   tests-ext     the extension's tests on CUDA (kernels, ops, registration), realistic shapes too
#   tests-triton  the Triton tests on CUDA, realistic shapes too
#   sanitizer     tests/run_compute_sanitizer.sh (memcheck, initcheck, synccheck)
#   bench-ops | bench-blocks | bench-models | bench-train | bench-distill
#                 one benchmark file each, JSON named after the GPU under benchmarks/results/
#   choose        benchmarks/choose_backends.py (CUDA rows of hdkd/ops/measured_backends.json)
# Logs and results are copied to $OUT when it is set (the device tool brings that folder back),
# also when a step fails; the first failing step ends the call.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

log() { echo "== $(date +%H:%M:%S) $*"; }

wheels() {  # on the development machine: pip can reach an index here, not there
  mkdir -p .whl
  python3 -m pip wheel -q --no-deps -w .whl fvcore iopath
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 --platform any -d .whl yacs termcolor
  ls .whl
}

setup() {
  if [ -f /tmp/hdkd_gpu_ready ]; then  # built and installed by an earlier step on this machine
    export PYTHONPATH=/tmp/site
    return
  fi
  python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())" ||
    { echo "setup: no CUDA GPU on this machine" >&2; exit 2; }
  ls .whl/*.whl >/dev/null || { echo "no wheels in .whl: run 'wheels' here, carry .whl" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
  local arch
  arch=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  log "building hdkd for sm_${arch/./}"
  TORCH_CUDA_ARCH_LIST="$arch" HDKD_REQUIRE_EXT=1 HDKD_CUDA_LINEINFO=1 \
    python3 -m pip install -q --no-build-isolation --no-deps .
  python3 -P -m hdkd info
  touch /tmp/hdkd_gpu_ready
}

device_tag() {
  python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))"
}

save() {  # save FILE...: keep the results for the device tool to bring back
  if [ -n "${OUT:-}" ]; then cp "$@" "$OUT"/; fi
}

logged() {  # logged NAME COMMAND...: run it, its output also in /tmp/NAME.log, saved either way
  local rc=0
  "${@:2}" 2>&1 | tee "/tmp/$1.log" || rc=$?
  save "/tmp/$1.log"
  return "$rc"
}

bench() {  # bench FILE NAME
  local json
  json="benchmarks/results/$(device_tag)-$2.json"
  log "benchmarks/$1 -> $json"
  logged "bench-$2" python3 -P -m pytest "benchmarks/$1" --benchmark-only -q -p no:cacheprovider \
    --benchmark-json="$json"
  python3 benchmarks/report.py "$json"
  save "$json" "${json%.json}.md"
}

for step in "$@"; do
  case "$step" in
    wheels) wheels ;;
    setup) setup ;;
    tests-ext)
      setup
      logged tests-ext python3 -P -m pytest -q -p no:cacheprovider tests/test_ext_cuda_kernels.py \
        tests/test_ext_ops.py tests/test_ext_registration.py ;;
    tests-triton)
      setup
      logged tests-triton python3 -P -m pytest -q -p no:cacheprovider tests/test_triton_*.py ;;
    sanitizer)
      setup
      logged sanitizer bash tests/run_compute_sanitizer.sh ;;
    bench-ops) setup; bench test_ops.py ops ;;
    bench-blocks) setup; bench test_blocks.py blocks ;;
    bench-models) setup; bench test_models.py models ;;
    bench-train) setup; bench test_train_step.py train-step ;;
    bench-distill) setup; bench test_distill_step.py distill-step ;;
    choose)
      setup
      logged choose python3 benchmarks/choose_backends.py
      save hdkd/ops/measured_backends.json ;;
    *) echo "unknown step: $step (see the top of $0)" >&2; exit 2 ;;
  esac
done
