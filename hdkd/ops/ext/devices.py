"""Where the extension's kernels run: the CPU always, CUDA when the .so was built with CUDA for
this GPU's architecture; and which calls they take (else the reference runs)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .build import cuda_image_problem, load

_module, _ = load()
# Read once: the selection code runs inside torch.compile graphs, which cannot call into pybind11.
_BUILD = dict(_module.build_info()) if _module is not None else {"cuda": False, "cuda_archs": []}
_CUDA_BUILT = bool(_BUILD["cuda"])
_CUDA_ARCHS = list(_BUILD["cuda_archs"])
# The depthwise kernels keep one pixel's taps on the stack (CPU) or in registers (CUDA backward).
_MAX_DW_KERNEL = 7


def _find_cuda_problem() -> Optional[str]:
    """Why the extension's CUDA kernels cannot run here, or None."""
    if not _CUDA_BUILT:
        return "the extension was built without CUDA"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return cuda_image_problem(torch.cuda.get_device_capability(), _CUDA_ARCHS)


# Found on first use, not at import (reading the capability creates a CUDA context), and kept:
# backend selection runs inside torch.compile graphs too.
_cuda_problem_found: dict[str, Optional[str]] = {}


def cuda_problem() -> Optional[str]:
    if "problem" not in _cuda_problem_found:
        _cuda_problem_found["problem"] = _find_cuda_problem()
    return _cuda_problem_found["problem"]


def devices() -> tuple[str, ...]:
    return ("cpu",) if cuda_problem() else ("cpu", "cuda")


def runs_kernels(x: Tensor, dw: Tensor) -> bool:
    """Whether a call on x with depthwise weight dw runs on the extension's kernels (else on the
    reference): not float64, depthwise kernel at most 7 x 7."""
    if x.dtype == torch.float64 or dw.shape[-1] > _MAX_DW_KERNEL:
        return False
    return x.device.type == "cpu" or (x.device.type == "cuda" and _CUDA_BUILT)
