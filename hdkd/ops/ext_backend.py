"""The `ext` backend: the compiled extension hdkd._C (csrc/).

CPU: fused float32 kernels for every op (bfloat16/float16 computed in float32). CUDA (when the .so
has CUDA and a GPU is visible): kernels for every op (csrc/cuda, float32 math, the 1x1 convs of the
fused eval block on cuBLAS). float64 and depthwise kernels larger than 7x7 run the reference.

mbcsa_eval runs the whole-block kernel when no gradient is needed; with gradients it is composed
of the fused depthwise and attention ops (which have autograd) and ATen 1x1 convs. mbcsa_train
is composed the same way, with BN batch statistics and running-statistics updates.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import reference
from .backends import Backend, register_backend
from .ext_build import cuda_image_problem, describe_build, load
from .reference import BatchNormState, MBCSAWeights

_module, _reason = load()
if _module is not None:
    from . import ext_ops

    ext_ops.register("hdkd")
# Read once: the selection code runs inside torch.compile graphs, which cannot call into pybind11.
_BUILD = dict(_module.build_info()) if _module is not None else {"cuda": False, "cuda_archs": []}
_CUDA_BUILT = bool(_BUILD["cuda"])
_CUDA_ARCHS = list(_BUILD["cuda_archs"])


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


def _cuda_problem() -> Optional[str]:
    if "problem" not in _cuda_problem_found:
        _cuda_problem_found["problem"] = _find_cuda_problem()
    return _cuda_problem_found["problem"]


def _devices() -> tuple[str, ...]:
    return ("cpu",) if _cuda_problem() else ("cpu", "cuda")


# The depthwise kernels keep one pixel's taps on the stack (CPU) or in registers (CUDA backward).
_MAX_DW_KERNEL = 7


def _kernels_for(x: Tensor, dw: Tensor) -> bool:
    """Whether x runs on the extension's kernels (else on the reference)."""
    if x.dtype == torch.float64 or dw.shape[-1] > _MAX_DW_KERNEL:
        return False
    return x.device.type == "cpu" or (x.device.type == "cuda" and _CUDA_BUILT)


def channel_spatial_attention(h: Tensor, fc1: Tensor, fc2: Tensor, sa: Tensor) -> Tensor:
    if h.dtype == torch.float64:
        return reference.channel_spatial_attention(h, fc1, fc2, sa)
    return torch.ops.hdkd.channel_spatial_attention_forward(h, fc1, fc2, sa)[0]


def _update_running(bn: BatchNormState, mean: Tensor, var: Tensor, count: int,
                    momentum: float) -> None:
    with torch.no_grad():
        bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
        unbiased = var * (count / (count - 1))
        bn.running_var.mul_(1 - momentum).add_(unbiased.to(bn.running_var.dtype), alpha=momentum)


def dwconv_bn_gelu(x: Tensor, dw: Tensor, bn: BatchNormState, training: bool,
                   momentum: float = 0.1, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    if not _kernels_for(x, dw):
        return reference.dwconv_bn_gelu(x, dw, bn, training, momentum, eps)
    if training:
        count = x.shape[0] * x.shape[2] * x.shape[3]
        if count < 2:
            raise ValueError(f"hdkd.dwconv_bn_gelu: expected more than 1 value per channel when "
                             f"training (batch statistics), got input shape {tuple(x.shape)}")
        y, avg, mx, _, _, mean, var = torch.ops.hdkd.dwconv_bn_gelu_train(
            x, dw, bn.weight, bn.bias, eps)
        _update_running(bn, mean, var, count, momentum)
        return y, avg, mx
    scale, shift = reference.fold_batch_norm(bn, eps)
    y, avg, mx, _ = torch.ops.hdkd.dwconv_bn_gelu_eval(x, dw, scale, shift)
    return y, avg, mx


def _needs_grad(x: Tensor, w: MBCSAWeights) -> bool:
    if not torch.is_grad_enabled():
        return False
    tensors = [x] + [t for t in w if isinstance(t, Tensor)]
    tensors += [t for bn in w if isinstance(bn, BatchNormState) for t in bn]
    return any(t.requires_grad for t in tensors)


def _composed(x: Tensor, w: MBCSAWeights, training: bool, momentum: float, eps: float) -> Tensor:
    """The block from the fused depthwise and attention ops plus ATen convs and BNs."""
    stride = 1 if w.shortcut is None else 2
    z = reference.batch_norm(x, w.pre_norm, training, momentum, eps)
    e = F.gelu(reference.batch_norm(F.conv2d(z, w.expand, stride=stride), w.expand_norm,
                                    training, momentum, eps))
    d, _, _ = dwconv_bn_gelu(e, w.dw, w.dw_norm, training, momentum, eps)
    h = channel_spatial_attention(d, w.ca_fc1, w.ca_fc2, w.sa_weight)
    body = reference.batch_norm(F.conv2d(h, w.project), w.project_norm, training, momentum, eps)
    return reference.mbcsa_shortcut(x, w.shortcut) + body


def mbcsa_train(x: Tensor, w: MBCSAWeights, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    if not _kernels_for(x, w.dw) or w.expand is None:
        return reference.mbcsa(x, w, True, momentum, eps)
    return _composed(x, w, True, momentum, eps)


def mbcsa_eval(x: Tensor, w: MBCSAWeights, momentum: float = 0.1, eps: float = 1e-5,
               folded: Optional[reference.FoldedMBCSA] = None) -> Tensor:
    """folded: reference.fold_mbcsa_float32(w, eps) when the caller has it cached."""
    if not _kernels_for(x, w.dw) or w.expand is None:
        return reference.mbcsa(x, w, False, momentum, eps)
    if _needs_grad(x, w):
        return _composed(x, w, False, momentum, eps)
    if folded is not None:
        return torch.ops.hdkd.mbcsa_eval(x, *folded)
    pre_scale, pre_shift = reference.fold_batch_norm(w.pre_norm, eps)
    e_scale, e_shift = reference.fold_batch_norm(w.expand_norm, eps)
    expand = w.expand.flatten(1)
    # reference.fold_mbcsa, with the bias's matrix-vector product written as a reduction so
    # that FLOP counters (hdkd.flops) see exactly the reference's FLOPs for this fused path
    expand_weight = (e_scale[:, None] * expand * pre_scale[None, :])[:, :, None, None]
    expand_bias = e_scale * (expand * pre_shift[None, :]).sum(1) + e_shift
    dw_weight, dw_bias = reference.fold_conv_batch_norm(w.dw, w.dw_norm, eps)
    project_weight, project_bias = reference.fold_conv_batch_norm(w.project, w.project_norm, eps)
    return torch.ops.hdkd.mbcsa_eval(x, expand_weight, expand_bias, dw_weight, dw_bias, w.ca_fc1,
                                     w.ca_fc2, w.sa_weight, project_weight, project_bias,
                                     w.shortcut)


def _describe() -> str:
    problem = _cuda_problem()
    cuda = "; CUDA: kernels for every op" if problem is None else f"; CUDA kernels off: {problem}"
    return describe_build().removeprefix("hdkd._C: ") + cuda


register_backend(Backend(
    name="ext", devices=_devices,
    ops={"channel_spatial_attention": channel_spatial_attention,
         "dwconv_bn_gelu": dwconv_bn_gelu, "mbcsa_train": mbcsa_train,
         "mbcsa_eval": mbcsa_eval},
    unavailable_reason=lambda: _reason, describe=_describe,
    device_problem=lambda kind: _cuda_problem() if kind == "cuda" else None))
