"""The `triton` backend: hdkd.kernels registered as torch custom ops (fake implementations and
autograd included, so torch.compile(fullgraph=True) traces through them), one module per op, and
the registry entry.

The kernels run on CUDA tensors, and on CPU tensors through the Triton interpreter when
TRITON_INTERPRET=1 (how CI tests them). hdkd.kernels is imported on the first call, not here:
the interpreter flag is read when the kernels are decorated.

float64 inputs take the reference path (the kernels compute in float32). Under autocast the
activation is cast to the autocast dtype; weights may stay float32 (the kernels read them in
float32 and return their gradients in their own dtype).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from typing import Optional

import torch

from ..backends import Backend, register_backend
from ..contract import BackendOps
from . import channel_spatial_attention, dwconv_bn_gelu, mbcsa

# Read once: backend selection runs inside torch.compile graphs, and dynamo (torch 2.11) refuses
# to trace importlib.util.find_spec.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def _find_interpreter_problem() -> Optional[str]:
    """Why the Triton interpreter cannot run the kernels with the installed packages, or None."""
    if not _TRITON_INSTALLED:
        return None
    try:
        triton_version, numpy_version = map(importlib.metadata.version, ("triton", "numpy"))
        broken = _major_minor(triton_version) < (3, 7) and _major_minor(numpy_version) >= (2, 4)
    except (importlib.metadata.PackageNotFoundError, AttributeError):  # no metadata, odd version
        return None
    if broken:
        # it converts 1-element arrays to Python ints, which numpy 2.4 made an error
        return (f"the interpreter of triton {triton_version} fails with numpy {numpy_version}: "
                f"install numpy < 2.4 or triton >= 3.7")
    return None


INTERPRETER_PROBLEM = _find_interpreter_problem()  # read once, as _TRITON_INSTALLED


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _unavailable_reason() -> Optional[str]:
    if not _TRITON_INSTALLED:
        return "triton is not installed (pip install triton)"
    if not torch.cuda.is_available() and not _interpret():
        return ("no CUDA GPU, and TRITON_INTERPRET is not set (set TRITON_INTERPRET=1 before "
                "triton is imported to run the kernels on the CPU through the interpreter)")
    if _interpret() and INTERPRETER_PROBLEM:
        return f"TRITON_INTERPRET=1, but {INTERPRETER_PROBLEM}"
    return None


def _devices() -> tuple[str, ...]:
    return ("cuda", "cpu") if _interpret() else ("cuda",)


def _describe() -> str:
    mode = "interpreter on the CPU and CUDA" if _interpret() else "CUDA"
    return f"Triton kernels (hdkd.kernels), {mode}"


register_backend(Backend(
    name="triton", devices=_devices, unavailable_reason=_unavailable_reason, describe=_describe,
    ops=BackendOps(
        channel_spatial_attention=channel_spatial_attention.channel_spatial_attention,
        dwconv_bn_gelu=dwconv_bn_gelu.dwconv_bn_gelu, mbcsa_train=mbcsa.mbcsa_train,
        mbcsa_eval=mbcsa.mbcsa_eval)))
