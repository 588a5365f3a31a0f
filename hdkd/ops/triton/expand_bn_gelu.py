"""The block's expand stage on Triton, 1x1 conv + BN + GELU: custom ops hdkd_triton::
expand_bn_gelu_forward / _backward (kernels/expand_bn_gelu.py), their fakes and autograd, and the
stage's function for hdkd.ops.triton.mbcsa (not a public op)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..reference import BatchNormState
from ..rules import conv_out_hw, empty_plain, update_running_stats
from .shared import (autocast_input, bn_statistics, check_hidden_extent, require_batch_values,
                     triton_op)


@triton_op("expand_bn_gelu_forward")
def expand_bn_gelu_forward(z: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor,
                           running_mean: Tensor, running_var: Tensor, training: bool, eps: float,
                           stride: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(e, mean, 1/std, unbiased variance); the statistics float32."""
    from hdkd.kernels import expand_bn_gelu
    check_hidden_extent("expand_bn_gelu_forward", z, weight.shape[0], stride)
    mean, rstd, var_unbiased = bn_statistics(
        training, lambda: expand_bn_gelu.batch_stats(z, weight, stride), running_mean,
        running_var, eps)
    e = expand_bn_gelu.forward(z, weight, gamma, beta, mean, rstd, stride)
    return e, mean, rstd, var_unbiased


@expand_bn_gelu_forward.register_fake
def _(z, weight, gamma, beta, running_mean, running_var, training, eps, stride):
    shape = (z.shape[0], weight.shape[0], *conv_out_hw(z, 1, stride))
    e = z.new_empty(shape).to(memory_format=torch.channels_last)
    return (e, *(empty_plain(z, (weight.shape[0],), torch.float32) for _ in range(3)))


@triton_op("expand_bn_gelu_backward")
def expand_bn_gelu_backward(ge: Tensor, z: Tensor, weight: Tensor, gamma: Tensor, beta: Tensor,
                            mean: Tensor, rstd: Tensor, training: bool, stride: int
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from hdkd.kernels import expand_bn_gelu
    dz, dweight, dgamma, dbeta = expand_bn_gelu.backward(ge, z, weight, gamma, beta, mean, rstd,
                                                         training, stride)
    return dz, dweight.contiguous(), dgamma, dbeta


@expand_bn_gelu_backward.register_fake
def _(ge, z, weight, gamma, beta, *rest):
    return (torch.empty_like(z), *(empty_plain(w, w.shape) for w in (weight, gamma, beta)))


def _setup(ctx, inputs, output):
    z, weight, gamma, beta, _, _, training, _, stride = inputs
    _, mean, rstd, _ = output
    ctx.training, ctx.stride = training, stride
    ctx.save_for_backward(z, weight, gamma, beta, mean, rstd)


def _grad(ctx, ge, *_unused):
    z, weight, gamma, beta, mean, rstd = ctx.saved_tensors
    grads = expand_bn_gelu_backward(ge, z, weight, gamma, beta, mean, rstd, ctx.training,
                                    ctx.stride)
    return (*grads, None, None, None, None, None)


expand_bn_gelu_forward.register_autograd(_grad, setup_context=_setup)


def expand_bn_gelu(z: Tensor, weight: Tensor, bn: BatchNormState, training: bool,
                   momentum: float, eps: float, stride: int) -> Tensor:
    """GELU(BN(conv1x1(z, weight, stride))): one GEMM pass, only z saved for the backward."""
    if training:
        require_batch_values("hdkd.mbcsa (expand)", z, conv_out_hw(z, 1, stride))
    e, mean, _, var_unbiased = expand_bn_gelu_forward(
        autocast_input(z), weight, bn.weight, bn.bias, bn.running_mean, bn.running_var, training,
        eps, stride)
    if training:
        update_running_stats(bn, mean, var_unbiased, momentum)
    return e
