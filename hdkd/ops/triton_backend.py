"""The `triton` backend: hdkd.kernels registered as torch custom ops (fake implementations and
autograd included, so torch.compile(fullgraph=True) traces through them), and the registry entry.

The kernels run on CUDA tensors, and on CPU tensors through the Triton interpreter when
TRITON_INTERPRET=1 (how CI tests them). hdkd.kernels is imported on the first call, not here:
the interpreter flag is read when the kernels are decorated.

float64 inputs take the reference path (the kernels compute in float32). Under autocast the
activation is cast to the autocast dtype; weights may stay float32 (the kernels read them in
float32 and return their gradients in their own dtype).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import os
import re
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import reference
from .backends import Backend, register_backend
from .reference import BatchNormState, MBCSAWeights

_NS = "hdkd_triton"
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


def _kernels():
    from hdkd.kernels import channel_spatial_attention, dwconv_bn_gelu, mbcsa_eval
    return channel_spatial_attention, dwconv_bn_gelu, mbcsa_eval


def _autocast(x: Tensor) -> Tensor:
    kind = x.device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return x.to(torch.get_autocast_dtype(kind))
    return x


def _stats_like(x: Tensor, *shape) -> Tensor:
    return x.new_empty(shape, dtype=torch.float32)


def _grad_like(w: Tensor) -> Tensor:
    """A parameter's gradient as the kernels return it: contiguous, in the parameter's dtype,
    whatever the parameter's layout (a channels_last model's weights)."""
    return torch.empty(w.shape, dtype=w.dtype, device=w.device)


# The kernels compute addresses as 32-bit products (b * stride_b + ...): no tensor they touch may
# span 2^31 elements or more. Such calls are refused before launching, never answered wrongly.
MAX_EXTENT = 2**31 - 1


def _extent(t: Tensor) -> int:
    """Elements between a tensor's first and last addressed element, inclusive."""
    if t.numel() == 0:
        return 0
    return 1 + sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride()))


def _check_extent(op: str, what: str, extent: int, batch: int) -> None:
    if extent > MAX_EXTENT:
        fits = max(1, batch * MAX_EXTENT // extent)
        raise ValueError(f"hdkd_triton::{op}: {what} spans {extent:,} elements, more than the "
                         f"Triton kernels' 32-bit addressing allows ({MAX_EXTENT:,}); run at most "
                         f"{fits} images at a time (split the batch)")


def _check_hidden_extent(op: str, x: Tensor, hidden: int, stride: int) -> None:
    """The hidden activation a 1x1 expand of x to `hidden` channels creates (4x x's width)."""
    ho, wo = _out_hw(x, 1, stride)
    _check_extent(op, "the hidden activation", x.shape[0] * hidden * ho * wo, x.shape[0])


def _op_body(fn):
    """The body of a custom op: computes in the dtypes its fake promises, on its tensors' GPU.
    An enclosing autocast stays enabled inside a custom op's Python body, so without this the
    float32 statistics' matmuls would run (and be returned) in bfloat16; and Triton launches on
    the current device, which need not be the tensors' (cuda:1 while cuda:0 is current)."""
    op = fn.__name__.lstrip("_")

    @functools.wraps(fn)
    def body(*args):
        for i, a in enumerate(args):
            if isinstance(a, Tensor) and a.dim():
                _check_extent(op, f"argument {i} (shape {tuple(a.shape)})", _extent(a),
                              a.shape[0])
        device = next(a.device for a in args if isinstance(a, Tensor))
        on_device = (torch.cuda.device(device) if device.type == "cuda"
                     else contextlib.nullcontext())
        with torch.autocast(device.type, enabled=False), on_device:
            return fn(*args)
    return body


# ------------------------------------------------------------------ channel-spatial attention

@torch.library.custom_op(f"{_NS}::channel_spatial_attention_forward", mutates_args=())
@_op_body
def _channel_spatial_attention_forward(h: Tensor, fc1: Tensor, fc2: Tensor, sa: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(out, ch_sum, ch_max, ch_ties, ca, pooled, pixel_ties, sa_map)."""
    return tuple(_kernels()[0].forward(h, fc1, fc2, sa))


@_channel_spatial_attention_forward.register_fake
def _(h, fc1, fc2, sa):
    B, C, H, W = h.shape
    return (torch.empty_like(h), *(_stats_like(h, B, C) for _ in range(4)),
            _stats_like(h, B, 2, H, W), _stats_like(h, B, H, W), _stats_like(h, B, H, W))


@torch.library.custom_op(f"{_NS}::channel_spatial_attention_backward", mutates_args=())
@_op_body
def _channel_spatial_attention_backward(grad: Tensor, h: Tensor, fc1: Tensor, fc2: Tensor, sa: Tensor, ch_sum: Tensor,
                  ch_max: Tensor, ch_cnt: Tensor, ca: Tensor, pooled: Tensor, pcnt: Tensor,
                  s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dh, *dweights = _kernels()[0].backward(grad, h, fc1, fc2, sa, ch_sum, ch_max, ch_cnt, ca,
                                           pooled, pcnt, s)
    return dh, *(g.contiguous() for g in dweights)


@_channel_spatial_attention_backward.register_fake
def _(grad, h, fc1, fc2, sa, *saved):
    return torch.empty_like(h), _grad_like(fc1), _grad_like(fc2), _grad_like(sa)


def _channel_spatial_attention_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output[1:])


def _channel_spatial_attention_grad(ctx, grad, *_unused):
    h, fc1, fc2, sa, *saved = ctx.saved_tensors
    if grad is None:
        grad = torch.zeros_like(h)
    return _channel_spatial_attention_backward(grad, h, fc1, fc2, sa, *saved)


_channel_spatial_attention_forward.register_autograd(_channel_spatial_attention_grad, setup_context=_channel_spatial_attention_setup)


def channel_spatial_attention(h: Tensor, fc1_weight: Tensor, fc2_weight: Tensor,
                              sa_weight: Tensor) -> Tensor:
    if h.dtype == torch.float64:
        return reference.channel_spatial_attention(h, fc1_weight, fc2_weight, sa_weight)
    return _channel_spatial_attention_forward(_autocast(h), fc1_weight, fc2_weight, sa_weight)[0]


# ------------------------------------------------------------------ depthwise conv + BN + GELU

def _out_hw(x: Tensor, k: int, stride: int) -> tuple[int, int]:
    return tuple((n + 2 * (k // 2) - k) // stride + 1 for n in x.shape[2:])


def _affine(gamma, beta, mean, rstd):
    scale = gamma.float() * rstd
    return scale, beta.float() - mean * scale


@torch.library.custom_op(f"{_NS}::dwconv_forward", mutates_args=())
@_op_body
def _dwconv_forward(x: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor, running_mean: Tensor,
                    running_var: Tensor, training: bool, eps: float, stride: int
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, avg, max, ties at max, mean, 1/std, unbiased variance); the statistics float32."""
    dw = _kernels()[1]
    weight = weight.contiguous()
    if training:
        mean, var, var_unbiased = dw.batch_stats(x, weight, stride)
    else:
        mean, var = running_mean.float().clone(), running_var.float()
        var_unbiased = var.clone()
    rstd = torch.rsqrt(var + eps)
    y, avg, mx, cnt = dw.forward(x, weight, *_affine(gamma, beta, mean, rstd), stride)
    return y, avg, mx, cnt, mean, rstd, var_unbiased


@_dwconv_forward.register_fake
def _(x, weight, gamma, beta, running_mean, running_var, training, eps, stride):
    from hdkd.kernels._config import empty_like_format
    B, C = x.shape[:2]
    y = empty_like_format(x, (B, C, *_out_hw(x, weight.shape[-1], stride)))
    return (y, *(_stats_like(x, B, C) for _ in range(3)), *(_stats_like(x, C) for _ in range(3)))


@torch.library.custom_op(f"{_NS}::dwconv_backward", mutates_args=())
@_op_body
def _dwconv_backward(gy: Tensor, gavg: Tensor, gmax: Tensor, x: Tensor, weight: Tensor,
                     gamma: Tensor, beta: Tensor, y: Tensor, ymax: Tensor, ycnt: Tensor,
                     mean: Tensor, rstd: Tensor, training: bool, stride: int
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dx, dweight, dgamma, dbeta = _kernels()[1].backward(
        gy, gavg, gmax, x, weight.contiguous(), y, ymax, ycnt, *_affine(gamma, beta, mean, rstd),
        mean, rstd, training, stride)
    return (dx, dweight.to(weight.dtype).contiguous(), dgamma.to(gamma.dtype),
            dbeta.to(beta.dtype))


@_dwconv_backward.register_fake
def _(gy, gavg, gmax, x, weight, gamma, beta, *rest):
    return torch.empty_like(x), _grad_like(weight), _grad_like(gamma), _grad_like(beta)


def _dwconv_setup(ctx, inputs, output):
    x, weight, gamma, beta, _, _, training, _, stride = inputs
    y, _, ymax, ycnt, mean, rstd, _ = output
    ctx.training, ctx.stride = training, stride
    ctx.save_for_backward(x, weight, gamma, beta, y, ymax, ycnt, mean, rstd)


def _dwconv_grad(ctx, gy, gavg, gmax, *_unused):
    x, weight, gamma, beta, y, ymax, ycnt, mean, rstd = ctx.saved_tensors
    gy = torch.zeros_like(y) if gy is None else gy
    gavg = torch.zeros_like(ymax) if gavg is None else gavg
    gmax = torch.zeros_like(ymax) if gmax is None else gmax
    dx, dweight, dgamma, dbeta = _dwconv_backward(gy, gavg, gmax, x, weight, gamma, beta, y, ymax,
                                                  ycnt, mean, rstd, ctx.training, ctx.stride)
    return dx, dweight, dgamma, dbeta, None, None, None, None, None


_dwconv_forward.register_autograd(_dwconv_grad, setup_context=_dwconv_setup)


def dwconv_bn_gelu(x: Tensor, dw_weight: Tensor, bn: BatchNormState, training: bool,
                   momentum: float = 0.1, eps: float = 1e-5,
                   stride: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    if x.dtype == torch.float64:
        return reference.dwconv_bn_gelu(x, dw_weight, bn, training, momentum, eps, stride)
    x = _autocast(x)
    if training:
        _require_batch_values("hdkd.dwconv_bn_gelu", x, _out_hw(x, dw_weight.shape[-1], stride))
    y, avg, mx, _, mean, _, var_unbiased = _dwconv_forward(
        x, dw_weight, bn.weight, bn.bias, bn.running_mean, bn.running_var, training, eps, stride)
    if training:
        _update_running_stats(bn, mean, var_unbiased, momentum)
    return y, avg.to(y.dtype), mx.to(y.dtype)


def _require_batch_values(op: str, x: Tensor, out_hw: tuple[int, int]) -> None:
    """Batch statistics need two values per channel, as F.batch_norm requires."""
    if x.shape[0] * out_hw[0] * out_hw[1] < 2:
        raise ValueError(f"{op}: batch statistics need more than 1 value per channel, got input "
                         f"shape {tuple(x.shape)} (output {out_hw[0]} x {out_hw[1]})")


def _update_running_stats(bn: BatchNormState, mean: Tensor, var_unbiased: Tensor,
                          momentum: float) -> None:
    """As F.batch_norm does in training (unbiased variance)."""
    with torch.no_grad():
        bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
        bn.running_var.mul_(1 - momentum).add_(var_unbiased.to(bn.running_var.dtype),
                                              alpha=momentum)


# ------------------------------------------------------------------ expand: 1x1 conv + BN + GELU

@torch.library.custom_op(f"{_NS}::expand_forward", mutates_args=())
@_op_body
def _expand_forward(z: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor, running_mean: Tensor,
                    running_var: Tensor, training: bool, eps: float, stride: int
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(e, mean, 1/std, unbiased variance); the statistics float32."""
    from hdkd.kernels import expand_bn_gelu
    _check_hidden_extent("expand_forward", z, weight.shape[0], stride)
    if training:
        mean, var, var_unbiased = expand_bn_gelu.batch_stats(z, weight, stride)
    else:
        mean, var = running_mean.float().clone(), running_var.float()
        var_unbiased = var.clone()
    rstd = torch.rsqrt(var + eps)
    e = expand_bn_gelu.forward(z, weight, gamma, beta, mean, rstd, stride)
    return e, mean, rstd, var_unbiased


@_expand_forward.register_fake
def _(z, weight, gamma, beta, running_mean, running_var, training, eps, stride):
    hw = tuple((n - 1) // stride + 1 for n in z.shape[2:])
    e = z.new_empty((z.shape[0], weight.shape[0], *hw)).to(memory_format=torch.channels_last)
    return (e, *(_stats_like(z, weight.shape[0]) for _ in range(3)))


@torch.library.custom_op(f"{_NS}::expand_backward", mutates_args=())
@_op_body
def _expand_backward(ge: Tensor, z: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor,
                     mean: Tensor, rstd: Tensor, training: bool, stride: int
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from hdkd.kernels import expand_bn_gelu
    dz, dweight, dgamma, dbeta = expand_bn_gelu.backward(ge, z, weight, gamma, beta, mean, rstd,
                                                         training, stride)
    return dz, dweight.contiguous(), dgamma, dbeta


@_expand_backward.register_fake
def _(ge, z, weight, gamma, beta, *rest):
    return torch.empty_like(z), _grad_like(weight), _grad_like(gamma), _grad_like(beta)


def _expand_setup(ctx, inputs, output):
    z, weight, gamma, beta, _, _, training, _, stride = inputs
    _, mean, rstd, _ = output
    ctx.training, ctx.stride = training, stride
    ctx.save_for_backward(z, weight, gamma, beta, mean, rstd)


def _expand_grad(ctx, ge, *_unused):
    z, weight, gamma, beta, mean, rstd = ctx.saved_tensors
    grads = _expand_backward(ge, z, weight, gamma, beta, mean, rstd, ctx.training, ctx.stride)
    return (*grads, None, None, None, None, None)


_expand_forward.register_autograd(_expand_grad, setup_context=_expand_setup)


def expand_bn_gelu(z: Tensor, weight: Tensor, bn: BatchNormState, training: bool,
                   momentum: float, eps: float, stride: int) -> Tensor:
    """GELU(BN(conv1x1(z, weight, stride))): one GEMM pass, only z saved for the backward."""
    if training:
        _require_batch_values("hdkd.mbcsa (expand)", z,
                              tuple((n - 1) // stride + 1 for n in z.shape[2:]))
    e, mean, _, var_unbiased = _expand_forward(_autocast(z), weight, bn.weight, bn.bias, bn.running_mean,
                                               bn.running_var, training, eps, stride)
    if training:
        _update_running_stats(bn, mean, var_unbiased, momentum)
    return e


# ------------------------------------------------------------------ attention + project conv

@torch.library.custom_op(f"{_NS}::channel_spatial_attention_project_forward", mutates_args=())
@_op_body
def _channel_spatial_attention_project_forward(d: Tensor, avg: Tensor, mx: Tensor, ties: Tensor, fc1: Tensor,
                         fc2: Tensor, sa: Tensor, project: Tensor
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(conv1x1(channel_spatial_attention(d), project) without bias, ch_sum, ca, pooled, pixel_ties, sa_map);
    avg, mx, ties: d's per-channel statistics from the depthwise pass (float32)."""
    from hdkd.kernels import attention_project
    v, ch_sum, _, _, ca, pooled, pcnt, s = attention_project.forward(d, avg, mx, ties, fc1, fc2,
                                                                     sa, project)
    return v, ch_sum, ca, pooled, pcnt, s


@_channel_spatial_attention_project_forward.register_fake
def _(d, avg, mx, ties, fc1, fc2, sa, project):
    from hdkd.kernels._config import empty_like_format
    B, C, H, W = d.shape
    v = empty_like_format(d, (B, project.shape[0], H, W))
    return (v, _stats_like(d, B, C), _stats_like(d, B, C), _stats_like(d, B, 2, H, W),
            _stats_like(d, B, H, W), _stats_like(d, B, H, W))


@torch.library.custom_op(f"{_NS}::channel_spatial_attention_project_backward", mutates_args=())
@_op_body
def _channel_spatial_attention_project_backward(grad: Tensor, d: Tensor, mx: Tensor, ties: Tensor, fc1: Tensor,
                          fc2: Tensor, sa: Tensor, project: Tensor, ch_sum: Tensor, ca: Tensor,
                          pooled: Tensor, pcnt: Tensor, s: Tensor
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dd, d avg, d max, d fc1, d fc2, d sa, d project)."""
    from hdkd.kernels import attention_project
    dd, davg, dmax, *dweights = attention_project.backward(grad, d, fc1, fc2, sa, project,
                                                           ch_sum, mx, ties, ca, pooled, pcnt, s)
    return dd, davg, dmax, *(g.contiguous() for g in dweights)


@_channel_spatial_attention_project_backward.register_fake
def _(grad, d, mx, ties, fc1, fc2, sa, project, *saved):
    return (torch.empty_like(d), torch.empty_like(mx), torch.empty_like(mx),
            *(_grad_like(t) for t in (fc1, fc2, sa, project)))


def _channel_spatial_attention_project_setup(ctx, inputs, output):
    d, _, mx, ties, fc1, fc2, sa, project = inputs
    ctx.save_for_backward(d, mx, ties, fc1, fc2, sa, project, *output[1:])


def _channel_spatial_attention_project_grad(ctx, grad, *_unused):
    dd, davg, dmax, dfc1, dfc2, dsa, dproject = _channel_spatial_attention_project_backward(grad, *ctx.saved_tensors)
    return dd, davg, dmax, None, dfc1, dfc2, dsa, dproject


_channel_spatial_attention_project_forward.register_autograd(_channel_spatial_attention_project_grad, setup_context=_channel_spatial_attention_project_setup)


def attention_project(d: Tensor, avg: Tensor, mx: Tensor, ties: Tensor, fc1_weight: Tensor,
                      fc2_weight: Tensor, sa_weight: Tensor, project_weight: Tensor) -> Tensor:
    """conv1x1(channel_spatial_attention(d), project_weight), the attention output never stored; avg, mx, ties: d's
    per-channel average, max and number of pixels at the max (float32, B x C)."""
    return _channel_spatial_attention_project_forward(d, avg, mx, ties, fc1_weight, fc2_weight, sa_weight,
                                project_weight)[0]


# ------------------------------------------------------------------ MBCSA

@torch.library.custom_op(f"{_NS}::mbcsa_eval_fused", mutates_args=())
@_op_body
def _mbcsa_eval_fused(x: Tensor, expand_weight: Tensor, expand_bias: Tensor, dw_weight: Tensor,
                      dw_bias: Tensor, ca_fc1: Tensor, ca_fc2: Tensor, sa_weight: Tensor,
                      project_weight: Tensor, project_bias: Tensor,
                      shortcut: Optional[Tensor]) -> Tensor:
    """Inference only (no autograd): the fused eval block from folded weights."""
    _check_hidden_extent("mbcsa_eval_fused", x, expand_weight.shape[0],
                         1 if shortcut is None else 2)
    folded = reference.FoldedMBCSA(expand_weight, expand_bias, dw_weight, dw_bias, ca_fc1, ca_fc2,
                                   sa_weight, project_weight, project_bias, shortcut)
    return _kernels()[2].forward(x, folded)


@_mbcsa_eval_fused.register_fake
def _(x, expand_weight, expand_bias, dw_weight, dw_bias, ca_fc1, ca_fc2, sa_weight,
      project_weight, project_bias, shortcut):
    from hdkd.kernels._config import empty_like_format
    stride = 1 if shortcut is None else 2
    hw = tuple((n - 1) // stride + 1 for n in x.shape[2:])
    return empty_like_format(x, (x.shape[0], project_weight.shape[0], *hw))


def _needs_grad(x: Tensor, w: MBCSAWeights) -> bool:
    if not torch.is_grad_enabled():
        return False
    leaves = [x, *(t for t in w if isinstance(t, Tensor))]
    leaves += [t for bn in w if isinstance(bn, BatchNormState) for t in (bn.weight, bn.bias)]
    return any(t.requires_grad for t in leaves)


def _mbcsa_composed(x: Tensor, w: MBCSAWeights, training: bool, momentum: float,
                    eps: float) -> Tensor:
    """The block from the Triton stages (expand, depthwise, attention + project), torch for the
    cin/cout-wide pre-norm, project BN and shortcut; differentiable, train or eval. Only e and d
    of the 4x-wide tensors are saved for the backward."""
    stride = 1 if w.shortcut is None else 2

    def bn(t, s):
        return F.batch_norm(t, s.running_mean, s.running_var, s.weight, s.bias, training,
                            momentum, eps)

    z = bn(x, w.pre_norm)
    if w.expand is None:
        h, _, _ = dwconv_bn_gelu(z, w.dw, w.dw_norm, training, momentum, eps, stride=stride)
        v = F.conv2d(h, w.project)
    else:
        e = expand_bn_gelu(z, w.expand, w.expand_norm, training, momentum, eps, stride)
        dn = w.dw_norm
        d, avg, mx, ties, mean, _, var_unbiased = _dwconv_forward(
            e, w.dw, dn.weight, dn.bias, dn.running_mean, dn.running_var, training, eps, 1)
        if training:
            _update_running_stats(dn, mean, var_unbiased, momentum)
        v = attention_project(d, avg, mx, ties, w.ca_fc1, w.ca_fc2, w.sa_weight, w.project)
    body = bn(v, w.project_norm)
    return reference.mbcsa_shortcut(x, w.shortcut) + body


def mbcsa_train(x: Tensor, w: MBCSAWeights, momentum: float, eps: float) -> Tensor:
    if x.dtype == torch.float64:
        return reference.mbcsa(x, w, True, momentum, eps)
    return _mbcsa_composed(x, w, True, momentum, eps)


def mbcsa_eval(x: Tensor, w: MBCSAWeights, momentum: float, eps: float,
               folded: Optional[reference.FoldedMBCSA] = None) -> Tensor:
    """folded: reference.fold_mbcsa_float32(w, eps) when the caller has it cached."""
    if x.dtype == torch.float64:
        return reference.mbcsa(x, w, False, momentum, eps)
    if w.expand is None or _needs_grad(x, w):
        return _mbcsa_composed(x, w, False, momentum, eps)
    if folded is None:
        with torch.no_grad():
            folded = reference.fold_mbcsa_float32(w, eps)
    return _mbcsa_eval_fused(_autocast(x), *folded)


def _describe() -> str:
    mode = "interpreter on the CPU and CUDA" if _interpret() else "CUDA"
    return f"Triton kernels (hdkd.kernels), {mode}"


register_backend(Backend(
    name="triton", devices=_devices, unavailable_reason=_unavailable_reason, describe=_describe,
    ops={"channel_spatial_attention": channel_spatial_attention,
         "dwconv_bn_gelu": dwconv_bn_gelu, "mbcsa_train": mbcsa_train, "mbcsa_eval": mbcsa_eval}))
