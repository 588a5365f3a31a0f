"""Depthwise conv + BN + GELU on the extension: fakes and autograd of the ops
<namespace>::dwconv_bn_gelu_eval (BN pre-folded) / _train / _backward (schemas: csrc/schemas.h),
and the backend's implementation of the op."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ..reference import BatchNormState
from ..rules import empty_like_input, empty_plain, update_running_stats
from .devices import runs_kernels


def _stats_fake(x):
    b, c = x.shape[:2]
    return empty_plain(x, (b, c)), empty_plain(x, (b, c)), empty_plain(x, (b, c), torch.float32)


def _eval_fake(x, w, scale, shift):
    return (empty_like_input(x), *_stats_fake(x))


def _train_fake(x, w, gamma, beta, eps):
    c = x.shape[1]
    conv = torch.empty(x.shape, dtype=torch.float32, device=x.device,
                       memory_format=torch.channels_last)
    return (empty_like_input(x), *_stats_fake(x), conv, empty_plain(x, (c,), torch.float32),
            empty_plain(x, (c,), torch.float32))


def _backward_fake(grad_y, grad_avg, grad_max, x, w, conv, scale, shift, y, mx, ties, mean,
                   invstd):
    return empty_like_input(x), *(empty_plain(t, t.shape) for t in (w, scale, shift))


def _eval_setup(ctx, inputs, output):
    x, w, scale, shift = inputs
    y, _, mx, ties = output
    ctx.mark_non_differentiable(ties)
    ctx.save_for_backward(x, w, scale, shift, y, mx, ties)


def _train_setup(ctx, inputs, output):
    x, w, gamma, beta, eps = inputs
    y, _, mx, ties, conv, mean, var = output
    ctx.mark_non_differentiable(ties, conv, mean, var)
    ctx.eps = eps
    ctx.save_for_backward(x, w, gamma, beta, y, mx, ties, conv, mean, var)


def register(namespace: str) -> None:
    """Fakes and autograd of the depthwise ops in `namespace`."""
    ops = getattr(torch.ops, namespace)

    def eval_backward(ctx, grad_y, grad_avg, grad_max, _grad_ties):
        x, w, scale, shift, y, mx, ties = ctx.saved_tensors
        return ops.dwconv_bn_gelu_backward(grad_y, grad_avg, grad_max, x, w, None, scale, shift,
                                           y, mx, ties, None, None)

    def train_backward(ctx, grad_y, grad_avg, grad_max, _ties, _conv, _mean, _var):
        x, w, gamma, beta, y, mx, ties, conv, mean, var = ctx.saved_tensors
        invstd = torch.rsqrt(var + ctx.eps)
        scale = gamma.float() * invstd
        shift = beta.float() - mean * scale
        dx, dw, dgamma, dbeta = ops.dwconv_bn_gelu_backward(grad_y, grad_avg, grad_max, x, w,
                                                            conv, scale, shift, y, mx, ties,
                                                            mean, invstd)
        return dx, dw, dgamma.to(gamma.dtype), dbeta.to(beta.dtype), None

    for name, fake in (("dwconv_bn_gelu_eval", _eval_fake), ("dwconv_bn_gelu_train", _train_fake),
                       ("dwconv_bn_gelu_backward", _backward_fake)):
        torch.library.register_fake(f"{namespace}::{name}", fake)
    torch.library.register_autograd(f"{namespace}::dwconv_bn_gelu_eval", eval_backward,
                                    setup_context=_eval_setup)
    torch.library.register_autograd(f"{namespace}::dwconv_bn_gelu_train", train_backward,
                                    setup_context=_train_setup)


def dwconv_bn_gelu(x: Tensor, dw: Tensor, bn: BatchNormState, training: bool,
                   momentum: float = 0.1, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    if not runs_kernels(x, dw):
        return reference.dwconv_bn_gelu(x, dw, bn, training, momentum, eps)
    if training:
        count = x.shape[0] * x.shape[2] * x.shape[3]
        if count < 2:
            raise ValueError(f"hdkd.dwconv_bn_gelu: expected more than 1 value per channel when "
                             f"training (batch statistics), got input shape {tuple(x.shape)}")
        y, avg, mx, _, _, mean, var = torch.ops.hdkd.dwconv_bn_gelu_train(
            x, dw, bn.weight, bn.bias, eps)
        # the op returns the biased batch variance; the running one is unbiased
        update_running_stats(bn, mean, var * (count / (count - 1)), momentum)
        return y, avg, mx
    scale, shift = reference.fold_batch_norm(bn, eps)
    y, avg, mx, _ = torch.ops.hdkd.dwconv_bn_gelu_eval(x, dw, scale, shift)
    return y, avg, mx
