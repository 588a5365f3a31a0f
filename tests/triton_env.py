"""Shared setup for the Triton tests: kernels on CUDA when a GPU is present, else on the CPU
through the Triton interpreter (TRITON_INTERPRET=1 is set here, before hdkd.kernels is imported,
unless the caller set it). Small odd shapes under the interpreter, realistic ones on CUDA."""
from __future__ import annotations

import os
import sys

import pytest
import torch

ON_CUDA = torch.cuda.is_available()
_set_here = not ON_CUDA and "TRITON_INTERPRET" not in os.environ
# triton's own tl.* helpers are decorated when triton is imported, so the interpreter works only
# when the variable was set before that (importing hdkd or torch._dynamo imports triton)
_imported_before = _set_here and "triton" in sys.modules
if not ON_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = torch.device("cpu" if INTERPRET else "cuda")

_reason = None
try:
    import triton  # noqa: F401
except ImportError:
    _reason = "triton is not installed"
if _reason is None and not ON_CUDA and not INTERPRET:
    _reason = "no CUDA GPU and TRITON_INTERPRET=0"
if _reason is None and INTERPRET:
    from hdkd.ops.triton import INTERPRETER_PROBLEM as _reason
if _reason is None and _imported_before:
    _reason = ("triton was imported (by an earlier test module) before TRITON_INTERPRET=1 was "
               "set; run the Triton tests in their own process: "
               "TRITON_INTERPRET=1 pytest tests/test_triton_*.py")
requires_triton = pytest.mark.skipif(_reason is not None, reason=_reason or "")


@pytest.fixture
def no_tf32():
    """float32 convolutions and matmuls of torch at full precision on the GPU (cuDNN defaults to
    TF32), so the float32 tolerance of 1e-4 against float64 applies to the torch parts too."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
cuda_only = pytest.mark.skipif(INTERPRET, reason="realistic shapes run on a CUDA GPU only")
