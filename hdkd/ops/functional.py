"""The public fused ops: argument checks, then the selected backend's implementation.

`backend` is "auto" (default), "torch", "triton" or "ext"; see hdkd.ops.backends for selection.
"""
from __future__ import annotations

from typing import Callable, Optional

from torch import Tensor

from . import reference
from .backends import resolve
from .checks import check_activation, check_same_device_dtype, check_shape
from .reference import BatchNormState, MBCSAWeights
from .rules import mbcsa_records_grad, records_grad


def channel_spatial_attention(h: Tensor, fc1_weight: Tensor, fc2_weight: Tensor,
                              sa_weight: Tensor, *, backend: Optional[str] = "auto") -> Tensor:
    """Channel-spatial attention with its residual: h * ca(h) * sa(h * ca(h)) + h
    (docs/model.md, section 5)."""
    op = "hdkd.channel_spatial_attention"
    check_activation(op, "h", h)
    c = h.shape[1]
    r = fc1_weight.shape[0]
    check_shape(op, "fc1_weight", fc1_weight, (r, c, 1, 1))
    check_shape(op, "fc2_weight", fc2_weight, (c, r, 1, 1))
    check_shape(op, "sa_weight", sa_weight, (1, 2, sa_weight.shape[-1], sa_weight.shape[-1]))
    check_same_device_dtype(op, h, [("fc1_weight", fc1_weight), ("fc2_weight", fc2_weight),
                                    ("sa_weight", sa_weight)])
    grad = records_grad([h, fc1_weight, fc2_weight, sa_weight])
    impl = resolve("channel_spatial_attention", h.device, backend, x=h,
                   grad=grad).ops.channel_spatial_attention
    return impl(h, fc1_weight, fc2_weight, sa_weight)


def dwconv_bn_gelu(x: Tensor, dw_weight: Tensor, bn: BatchNormState, training: bool,
                   momentum: float = 0.1, eps: float = 1e-5, *,
                   backend: Optional[str] = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """GELU(BN(depthwise kxk conv(x))) and the per-channel average and max of the result.

    The statistics are of the result as returned (in x's dtype). As with torch.amax, the max's
    gradient is split evenly among the pixels tied at it, on every backend."""
    op = "hdkd.dwconv_bn_gelu"
    check_activation(op, "x", x)
    c = x.shape[1]
    k = dw_weight.shape[-1]
    check_shape(op, "dw_weight", dw_weight, (c, 1, k, k))
    _check_bn(op, "bn", bn, c, x)
    check_same_device_dtype(op, x, [("dw_weight", dw_weight)])
    grad = records_grad([x, dw_weight, *bn])
    workload = "dwconv_bn_gelu_train" if training else "dwconv_bn_gelu_eval"
    impl = resolve("dwconv_bn_gelu", x.device, backend, x=x, grad=grad,
                   workload=workload).ops.dwconv_bn_gelu
    return impl(x, dw_weight, bn, training, momentum, eps)


def mbcsa(x: Tensor, w: MBCSAWeights, training: bool, momentum: float = 0.1, eps: float = 1e-5,
          *, backend: Optional[str] = "auto",
          folded: Optional[reference.FoldedMBCSA] = None) -> Tensor:
    """The whole MBCSA block (train: batch statistics; eval: running statistics).

    folded (eval only): reference.fold_mbcsa_float32(w, eps), computed by the caller once for
    many calls (hdkd.nn.MBCSA caches it); backends with a fused eval kernel use it instead of
    folding on every call, the torch backend (the reference) ignores it."""
    if training:
        if folded is not None:
            raise ValueError("hdkd.mbcsa: folded weights are for eval (running statistics), "
                             "not training")
        return _mbcsa_backend(x, w, training, backend).ops.mbcsa_train(x, w, momentum, eps)
    return mbcsa_eval_runner(x, w, momentum, eps, backend=backend, folded=folded)(x)


def mbcsa_eval_runner(x: Tensor, w: MBCSAWeights, momentum: float = 0.1, eps: float = 1e-5,
                      *, backend: Optional[str] = "auto",
                      folded: Optional[reference.FoldedMBCSA] = None
                      ) -> Callable[[Tensor], Tensor]:
    """mbcsa in eval as a callable on x, and on any input with x's dtype, device, shape and
    strides under the same grad mode, autocast and backend settings: the checks and the backend
    choice are made here, once (hdkd.nn.eval_plan keeps the callable)."""
    chosen = _mbcsa_backend(x, w, False, backend)
    impl = chosen.ops.mbcsa_eval
    if folded is None:
        return lambda t: impl(t, w, momentum, eps)
    folded = chosen.prepare_folded(x, folded)
    return lambda t: impl(t, w, momentum, eps, folded=folded)


def _mbcsa_backend(x: Tensor, w: MBCSAWeights, training: bool, backend: Optional[str]):
    """The checks of mbcsa's arguments, then the backend that runs it."""
    op = "hdkd.mbcsa"
    cin = w.pre_norm.weight.shape[0]
    check_activation(op, "x", x, channels=cin)
    named = [(f"{field}", t) for field, t in zip(w._fields, w) if isinstance(t, Tensor)]
    check_same_device_dtype(op, x, named)
    for field in ("pre_norm", "expand_norm", "dw_norm", "project_norm"):
        bn = getattr(w, field)
        if bn is not None:
            _check_bn(op, field, bn, bn.weight.shape[0], x)
    name = "mbcsa_train" if training else "mbcsa_eval"
    return resolve(name, x.device, backend, x=x, grad=mbcsa_records_grad(x, w))


def _check_bn(op: str, name: str, bn: BatchNormState, channels: int, x: Tensor) -> None:
    for part, t in zip(bn._fields, bn):
        check_shape(op, f"{name}.{part}", t, (channels,))
    check_same_device_dtype(op, x, [(f"{name}.{p}", t) for p, t in zip(bn._fields, bn)])

