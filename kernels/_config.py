"""Shared settings for the Triton kernels: interpreter detection, autotune config lists, dtypes.

TRITON_INTERPRET is read when a kernel is decorated, so hdkd imports these modules lazily (on the
first Triton op call), after a test or user has had the chance to set it.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def configs(gpu: list[dict], interpret: dict, warps: tuple[int, ...] = (4,),
            stages: tuple[int, ...] = (1,)) -> list[triton.Config]:
    """Autotune candidates: the GPU list crossed with num_warps/num_stages (an entry may fix its
    own "num_warps"), or the single small configuration the interpreter runs (it would otherwise
    time every candidate on the CPU)."""
    if INTERPRET:
        return [triton.Config(interpret, num_warps=1, num_stages=1)]
    out = []
    for kw in gpu:
        kw = dict(kw)
        own = kw.pop("num_warps", None)
        out += [triton.Config(kw, num_warps=w, num_stages=s)
                for w in ((own,) if own else warps) for s in stages]
    return out


def dot_dtype(dtype: torch.dtype):
    """Input type of tl.dot for activations of `dtype`: bf16/fp16 tensor-core GEMMs on the GPU.
    The interpreter multiplies bf16 tiles as raw uint16 (triton 3.8), so it gets float32."""
    if dtype == torch.float32 or (INTERPRET and dtype == torch.bfloat16):
        return tl.float32
    return tl.bfloat16 if dtype == torch.bfloat16 else tl.float16


def next_pow2(n: int, lo: int = 1) -> int:
    return max(lo, triton.next_power_of_2(n))


def strides(name: str, t: torch.Tensor) -> dict[str, int]:
    """A B x C x H x W tensor's strides as the keyword arguments stride_<name>_b, _c, _y, _x."""
    return {f"stride_{name}_{dim}": step for dim, step in zip("bcyx", t.stride(), strict=True)}


