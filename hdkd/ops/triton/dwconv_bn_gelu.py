"""Depthwise conv + BN + GELU on Triton: custom ops hdkd_triton::dwconv_bn_gelu_forward /
_backward (kernels/dwconv_bn_gelu.py; one op for train and eval, with a stride), their fakes and
autograd, and the backend's implementation of the op."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ..reference import BatchNormState
from ..rules import conv_out_hw, empty_like_input, empty_plain, update_running_stats
from .shared import autocast_input, bn_statistics, require_batch_values, triton_op


def _bn_affine(gamma: Tensor, beta: Tensor, mean: Tensor, rstd: Tensor
               ) -> tuple[Tensor, Tensor]:
    """BN with these statistics as a per-channel (scale, shift), float32."""
    scale = gamma.float() * rstd
    return scale, beta.float() - mean * scale


@triton_op("dwconv_bn_gelu_forward")
def dwconv_bn_gelu_forward(x: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor,
                           running_mean: Tensor, running_var: Tensor, training: bool, eps: float,
                           stride: int
                           ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, avg, max, ties at max, mean, 1/std, unbiased variance); the statistics float32."""
    from hdkd.kernels import dwconv_bn_gelu
    weight = weight.contiguous()
    mean, rstd, var_unbiased = bn_statistics(
        training, lambda: dwconv_bn_gelu.batch_stats(x, weight, stride), running_mean,
        running_var, eps)
    y, avg, mx, ties = dwconv_bn_gelu.forward(x, weight, *_bn_affine(gamma, beta, mean, rstd),
                                              stride)
    return y, avg, mx, ties, mean, rstd, var_unbiased


@dwconv_bn_gelu_forward.register_fake
def _(x, weight, gamma, beta, running_mean, running_var, training, eps, stride):
    B, C = x.shape[:2]
    y = empty_like_input(x, (B, C, *conv_out_hw(x, weight.shape[-1], stride)))
    return (y, *(empty_plain(x, (B, C), torch.float32) for _ in range(3)),
            *(empty_plain(x, (C,), torch.float32) for _ in range(3)))


@triton_op("dwconv_bn_gelu_backward")
def dwconv_bn_gelu_backward(gy: Tensor, gavg: Tensor, gmax: Tensor, x: Tensor, weight: Tensor,
                            gamma: Tensor, beta: Tensor, y: Tensor, ymax: Tensor, yties: Tensor,
                            mean: Tensor, rstd: Tensor, training: bool, stride: int
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from hdkd.kernels import dwconv_bn_gelu
    dx, dweight, dgamma, dbeta = dwconv_bn_gelu.backward(
        gy, gavg, gmax, x, weight.contiguous(), y, ymax, yties,
        *_bn_affine(gamma, beta, mean, rstd), mean, rstd, training, stride)
    return (dx, dweight.to(weight.dtype).contiguous(), dgamma.to(gamma.dtype),
            dbeta.to(beta.dtype))


@dwconv_bn_gelu_backward.register_fake
def _(gy, gavg, gmax, x, weight, gamma, beta, *rest):
    return (torch.empty_like(x), *(empty_plain(w, w.shape) for w in (weight, gamma, beta)))


def _setup(ctx, inputs, output):
    x, weight, gamma, beta, _, _, training, _, stride = inputs
    y, _, ymax, yties, mean, rstd, _ = output
    ctx.training, ctx.stride = training, stride
    ctx.save_for_backward(x, weight, gamma, beta, y, ymax, yties, mean, rstd)


def _grad(ctx, gy, gavg, gmax, *_unused):
    x, weight, gamma, beta, y, ymax, yties, mean, rstd = ctx.saved_tensors
    gy = torch.zeros_like(y) if gy is None else gy
    gavg = torch.zeros_like(ymax) if gavg is None else gavg
    gmax = torch.zeros_like(ymax) if gmax is None else gmax
    dx, dweight, dgamma, dbeta = dwconv_bn_gelu_backward(
        gy, gavg, gmax, x, weight, gamma, beta, y, ymax, yties, mean, rstd, ctx.training,
        ctx.stride)
    return dx, dweight, dgamma, dbeta, None, None, None, None, None


dwconv_bn_gelu_forward.register_autograd(_grad, setup_context=_setup)


def dwconv_bn_gelu(x: Tensor, dw_weight: Tensor, bn: BatchNormState, training: bool,
                   momentum: float = 0.1, eps: float = 1e-5,
                   stride: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    if x.dtype == torch.float64:
        return reference.dwconv_bn_gelu(x, dw_weight, bn, training, momentum, eps, stride)
    x = autocast_input(x)
    if training:
        require_batch_values("hdkd.dwconv_bn_gelu", x,
                             conv_out_hw(x, dw_weight.shape[-1], stride))
    y, avg, mx, _, mean, _, var_unbiased = dwconv_bn_gelu_forward(
        x, dw_weight, bn.weight, bn.bias, bn.running_mean, bn.running_var, training, eps, stride)
    if training:
        update_running_stats(bn, mean, var_unbiased, momentum)
    return y, avg.to(y.dtype), mx.to(y.dtype)
