"""Shared by tests/test_ext_*.py: skip (with the reason) when hdkd._C is not built, and the
float64-reference comparison helpers."""
from __future__ import annotations

import pytest
import torch

from hdkd.ops.ext_build import load

EXT, EXT_REASON = load()
requires_ext = pytest.mark.skipif(EXT is None, reason=f"hdkd._C unavailable: {EXT_REASON}")

# Relative-norm tolerances against a float64 reference (PERFORMANCE.md).
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 5e-3}


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((a.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """x as 'contiguous', 'channels_last' or 'strided' (a non-contiguous slice view)."""
    if kind == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if kind == "strided":
        buf = x.new_zeros(*x.shape[:3], 2 * x.shape[3])
        buf[..., ::2] = x
        return buf[..., ::2]
    return x.contiguous()
