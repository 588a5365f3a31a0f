"""The channel-spatial attention on Triton: custom ops hdkd_triton::channel_spatial_attention_
forward / _backward (kernels/channel_spatial_attention.py), their fakes and autograd, and the
backend's implementation of the op."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ..rules import empty_plain
from .shared import autocast_input, triton_op


@triton_op("channel_spatial_attention_forward")
def channel_spatial_attention_forward(
        h: Tensor, fc1: Tensor, fc2: Tensor, sa: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(out, ch_sum, ch_max, ch_ties, ca, pooled, pixel_ties, sa_map)."""
    from hdkd.kernels import channel_spatial_attention
    return tuple(channel_spatial_attention.forward(h, fc1, fc2, sa))


@channel_spatial_attention_forward.register_fake
def _(h, fc1, fc2, sa):
    B, C, H, W = h.shape
    stats = [empty_plain(h, shape, torch.float32)
             for shape in [(B, C)] * 4 + [(B, 2, H, W), (B, H, W), (B, H, W)]]
    return (torch.empty_like(h), *stats)


@triton_op("channel_spatial_attention_backward")
def channel_spatial_attention_backward(
        grad: Tensor, h: Tensor, fc1: Tensor, fc2: Tensor, sa: Tensor, ch_sum: Tensor,
        ch_max: Tensor, ch_ties: Tensor, ca: Tensor, pooled: Tensor, pixel_ties: Tensor,
        sa_map: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from hdkd.kernels import channel_spatial_attention
    dh, *dweights = channel_spatial_attention.backward(grad, h, fc1, fc2, sa, ch_sum, ch_max,
                                                       ch_ties, ca, pooled, pixel_ties, sa_map)
    return dh, *(g.contiguous() for g in dweights)


@channel_spatial_attention_backward.register_fake
def _(grad, h, fc1, fc2, sa, *saved):
    return (torch.empty_like(h), *(empty_plain(w, w.shape) for w in (fc1, fc2, sa)))


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output[1:])


def _grad(ctx, grad, *_unused):
    h, fc1, fc2, sa, *saved = ctx.saved_tensors
    if grad is None:
        grad = torch.zeros_like(h)
    return channel_spatial_attention_backward(grad, h, fc1, fc2, sa, *saved)


channel_spatial_attention_forward.register_autograd(_grad, setup_context=_setup)


def channel_spatial_attention(h: Tensor, fc1_weight: Tensor, fc2_weight: Tensor,
                              sa_weight: Tensor) -> Tensor:
    if h.dtype == torch.float64:
        return reference.channel_spatial_attention(h, fc1_weight, fc2_weight, sa_weight)
    return channel_spatial_attention_forward(autocast_input(h), fc1_weight, fc2_weight,
                                             sa_weight)[0]
