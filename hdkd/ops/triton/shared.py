"""What the Triton ops of this backend share: the op decorator (namespace, body wrapper), the
32-bit extent checks, the batch-statistics size check, and casting the activation to the
autocast dtype."""
from __future__ import annotations

import contextlib
import functools
import inspect

import torch
from torch import Tensor

from ..rules import conv_out_hw

NAMESPACE = "hdkd_triton"
# The kernels compute addresses as 32-bit products (b * stride_b + ...): no tensor they touch may
# span 2^31 elements or more. Such calls are refused before launching, never answered wrongly.
MAX_EXTENT = 2**31 - 1


def extent(t: Tensor) -> int:
    """Elements between a tensor's first and last addressed element, inclusive."""
    if t.numel() == 0:
        return 0
    return 1 + sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride()))


def check_extent(op: str, what: str, elements: int, batch: int) -> None:
    if elements > MAX_EXTENT:
        fits = max(1, batch * MAX_EXTENT // elements)
        raise ValueError(f"{NAMESPACE}::{op}: {what} spans {elements:,} elements, more than the "
                         f"Triton kernels' 32-bit addressing allows ({MAX_EXTENT:,}); run at most "
                         f"{fits} images at a time (split the batch)")


def check_hidden_extent(op: str, x: Tensor, hidden: int, stride: int) -> None:
    """The hidden activation a 1x1 expand of x to `hidden` channels creates (4x x's width)."""
    ho, wo = conv_out_hw(x, 1, stride)
    check_extent(op, "the hidden activation", x.shape[0] * hidden * ho * wo, x.shape[0])


def require_batch_values(op: str, x: Tensor, out_hw: tuple[int, int]) -> None:
    """Batch statistics need two values per channel, as F.batch_norm requires."""
    if x.shape[0] * out_hw[0] * out_hw[1] < 2:
        raise ValueError(f"{op}: batch statistics need more than 1 value per channel, got input "
                         f"shape {tuple(x.shape)} (output {out_hw[0]} x {out_hw[1]})")


def bn_statistics(training: bool, batch_stats, running_mean: Tensor, running_var: Tensor,
                  eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(mean, 1/std, unbiased variance), float32: batch_stats() -> (mean, biased var, unbiased
    var) of the conv output when training, else the running statistics."""
    if training:
        mean, var, var_unbiased = batch_stats()
    else:
        mean, var = running_mean.float().clone(), running_var.float()
        var_unbiased = var.clone()
    return mean, torch.rsqrt(var + eps), var_unbiased


def autocast_input(x: Tensor) -> Tensor:
    """x in the autocast dtype when autocast is on for its device (the kernels take one dtype)."""
    kind = x.device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return x.to(torch.get_autocast_dtype(kind))
    return x


def _op_body(op: str, fn):
    """The body of a custom op: computes in the dtypes its fake promises, on its tensors' GPU.
    An enclosing autocast stays enabled inside a custom op's Python body, so without this the
    float32 statistics' matmuls would run (and be returned) in bfloat16; and Triton launches on
    the current device, which need not be the tensors' (cuda:1 while cuda:0 is current)."""

    @functools.wraps(fn)
    def body(*args):
        for i, a in enumerate(args):
            if isinstance(a, Tensor) and a.dim():
                check_extent(op, f"argument {i} (shape {tuple(a.shape)})", extent(a),
                             a.shape[0])
        device = next(a.device for a in args if isinstance(a, Tensor))
        on_device = (torch.cuda.device(device) if device.type == "cuda"
                     else contextlib.nullcontext())
        with torch.autocast(device.type, enabled=False), on_device:
            return fn(*args)
    # torch infers the op's schema from the signature, evaluating string annotations in the
    # globals of `body` (this module): hand it fn's evaluated in fn's module
    body.__signature__ = inspect.signature(fn, eval_str=True)
    return body


def triton_op(name: str):
    """Registers the decorated function as the custom op hdkd_triton::<name> (schema from its
    annotations), its body wrapped as above; register its fake and autograd on the result."""
    def register(fn):
        return torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=())(
            _op_body(name, fn))
    return register
