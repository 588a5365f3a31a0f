"""Rules every backend follows, written once: the memory format and size of an op's outputs,
whether a call records gradients, and the BN running-statistics update."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor

from .reference import BatchNormState, MBCSAWeights


def output_memory_format(x: Tensor) -> torch.memory_format:
    """channels_last exactly when x is channels_last and not also contiguous (C == 1 or
    H == W == 1 make it both). The C++ kernels follow the same rule (csrc/output_format.h);
    the Triton launchers allocate with empty_like_input."""
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


def empty_like_input(x: Tensor, shape=None, dtype: Optional[torch.dtype] = None) -> Tensor:
    """An activation output: `shape` (default x's), x's dtype unless given, x's memory format by
    the rule above."""
    return torch.empty(x.shape if shape is None else shape, dtype=dtype or x.dtype,
                       device=x.device, memory_format=output_memory_format(x))


def empty_plain(t: Tensor, shape, dtype: Optional[torch.dtype] = None) -> Tensor:
    """A contiguous tensor on t's device, in t's dtype unless given: statistics, and parameter
    gradients whatever the parameter's layout."""
    return torch.empty(shape, dtype=dtype or t.dtype, device=t.device)


def conv_out_hw(x: Tensor, k: int, stride: int) -> tuple[int, int]:
    """Output height and width of a k x k convolution of x padded by k // 2 (1 x 1: no padding)."""
    return tuple((n + 2 * (k // 2) - k) // stride + 1 for n in x.shape[2:])


def records_grad(tensors: Iterable[Optional[Tensor]]) -> bool:
    """Whether a call on these tensors builds an autograd graph."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def mbcsa_tensors(x: Tensor, w: MBCSAWeights) -> list[Tensor]:
    """x and every tensor of w, its BN states' included."""
    tensors = [x, *(t for t in w if isinstance(t, Tensor))]
    return tensors + [t for bn in w if isinstance(bn, BatchNormState) for t in bn]


def mbcsa_records_grad(x: Tensor, w: MBCSAWeights) -> bool:
    """records_grad of x and w's tensors; with grad mode off, without listing them."""
    return torch.is_grad_enabled() and records_grad(mbcsa_tensors(x, w))


def update_running_stats(bn: BatchNormState, mean: Tensor, var_unbiased: Tensor,
                         momentum: float) -> None:
    """In place, as F.batch_norm does in training (with the unbiased batch variance)."""
    with torch.no_grad():
        bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
        bn.running_var.mul_(1 - momentum).add_(var_unbiased.to(bn.running_var.dtype),
                                              alpha=momentum)
