"""The CUDA kernels' CPU emulation built with AddressSanitizer, run over the kernel tests' odd
shapes in a child process (libasan preloaded, since the interpreter is not instrumented): any
out-of-bounds read or write in the kernels' index math aborts the child with a report."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ext_env import EXT, EXT_REASON

HERE = Path(__file__).resolve().parent

CHILD = r"""
import sys
sys.modules["triton"] = None  # libtriton's C++ exceptions trip ASan's __cxa_throw interceptor
import torch, cuda_emulation
ops = cuda_emulation.load(asan=True)
g = torch.Generator().manual_seed(0)
def r(*s): return torch.randn(*s, generator=g)
for shape in [(2, 16, 5, 7), (1, 24, 3, 1), (3, 13, 6, 5), (1, 8, 1, 1)]:
    b, c, h, w = shape
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = r(*shape).contiguous(memory_format=fmt)
        fc1, fc2, sa = r(1, c, 1, 1), r(c, 1, 1, 1), r(1, 2, 7, 7)
        out, ca, s = ops.channel_spatial_attention_forward(x, fc1, fc2, sa)
        ops.channel_spatial_attention_backward(torch.randn_like(out), x, fc1, fc2, sa, ca, s)
        for k in (1, 3, 5, 7):
            wt, gamma, beta = r(c, 1, k, k), r(c).abs() + 0.5, r(c)
            y, avg, mx, ties = ops.dwconv_bn_gelu_eval(x, wt, gamma, beta)
            ops.dwconv_bn_gelu_backward(torch.randn_like(y), torch.randn_like(avg),
                                        torch.randn_like(mx), x, wt, None, gamma, beta, y, mx,
                                        ties, None, None)
            if b * h * w >= 2:
                y, avg, mx, ties, conv, mean, var = ops.dwconv_bn_gelu_train(x, wt, gamma, beta, 1e-5)
                invstd = torch.rsqrt(var + 1e-5)
                ops.dwconv_bn_gelu_backward(torch.randn_like(y), torch.randn_like(avg),
                                            torch.randn_like(mx), x, wt, conv, gamma * invstd,
                                            beta - mean * gamma * invstd, y, mx, ties, mean, invstd)
print("asan: clean")
"""


@pytest.mark.skipif(EXT is None, reason=f"hdkd._C unavailable (no toolchain assumed): {EXT_REASON}")
def test_emulated_kernels_under_address_sanitizer():
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no gcc to locate libasan")
    libasan = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True,
                             text=True).stdout.strip()
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        pytest.skip("libasan is not installed")
    env = {**os.environ, "LD_PRELOAD": libasan, "PYTHONPATH": str(HERE),
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1"}
    run = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0 and "asan: clean" in run.stdout, run.stderr[-4000:]
