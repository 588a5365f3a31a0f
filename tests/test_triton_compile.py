"""Every Triton kernel compiles for Hopper (sm_90) with triton's own ptxas, no GPU needed: the
bf16 GEMMs use wgmma (HGMMA in the SASS), no first-choice configuration spills registers, and
the kernels that stream the hidden tensor access global memory in 128-bit vectors, never one
bf16 at a time (as specialised for the GPU target shape). Runs tests/triton_compile_check.py in
a child process without TRITON_INTERPRET."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

# located without importing triton here: the interpreter tests need TRITON_INTERPRET set first
_SPEC = importlib.util.find_spec("triton")
CUOBJDUMP = (os.path.join(os.path.dirname(_SPEC.origin), "backends", "nvidia", "bin", "cuobjdump")
             if _SPEC else "")


# Kernels over the small B x 2 x H x W pooled map and the C x C/16 gate MLP: their scalar weight
# loads move a few kilobytes.
SMALL_TENSOR_KERNELS = {"_channel_gate_kernel", "_spatial_gate_kernel", "_spatial_conv_grad_kernel"}


@pytest.mark.skipif(not os.path.exists(CUOBJDUMP),
                    reason="triton (with its NVIDIA toolchain) is not installed")
def test_kernels_compile_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = os.path.join(os.path.dirname(__file__), "triton_compile_check.py")
    proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) >= 20, proc.stdout[-2000:]
    failed = [(r["kernel"], r["variant"], r["error"]) for r in rows if not r["ok"]]
    assert not failed, failed
    for r in rows:
        bf16_gemm = r["variant"].get("DOT_DTYPE") == "bf16"
        if bf16_gemm:
            assert r["hgmma"] > 0, r
        if r["variant"].get("DOT_DTYPE") != "fp32":  # the IEEE fp32 GEMM may spill a little
            assert r["ldl"] == 0 and r["stl"] == 0, r
        if r["kernel"] not in SMALL_TENSOR_KERNELS:
            assert "16" not in r["loads"] and "16" not in r["stores"], r
