"""The block's attention + project stage on Triton: custom ops hdkd_triton::
channel_spatial_attention_project_forward / _backward (kernels/channel_spatial_attention_project.py:
the project GEMM with the attention's gates applied while loading, so the attention output is
never stored),
their fakes and autograd, and the stage's function for hdkd.ops.triton.mbcsa (not a public op)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..rules import empty_like_input, empty_plain
from .shared import triton_op


@triton_op("channel_spatial_attention_project_forward")
def channel_spatial_attention_project_forward(
        d: Tensor, avg: Tensor, mx: Tensor, ties: Tensor, fc1: Tensor, fc2: Tensor, sa: Tensor,
        project: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(conv1x1(channel_spatial_attention(d), project) without bias, ch_sum, ca, pooled,
    pixel_ties, sa_map); avg, mx, ties: d's per-channel statistics from the depthwise pass
    (float32)."""
    from hdkd.kernels import channel_spatial_attention_project as kernels
    v, ch_sum, _, _, ca, pooled, pixel_ties, sa_map = kernels.forward(
        d, avg, mx, ties, fc1, fc2, sa, project)
    return v, ch_sum, ca, pooled, pixel_ties, sa_map


@channel_spatial_attention_project_forward.register_fake
def _(d, avg, mx, ties, fc1, fc2, sa, project):
    B, C, H, W = d.shape
    v = empty_like_input(d, (B, project.shape[0], H, W))
    stats = [empty_plain(d, shape, torch.float32)
             for shape in [(B, C), (B, C), (B, 2, H, W), (B, H, W), (B, H, W)]]
    return (v, *stats)


@triton_op("channel_spatial_attention_project_backward")
def channel_spatial_attention_project_backward(
        grad: Tensor, d: Tensor, mx: Tensor, ties: Tensor, fc1: Tensor, fc2: Tensor, sa: Tensor,
        project: Tensor, ch_sum: Tensor, ca: Tensor, pooled: Tensor, pixel_ties: Tensor,
        sa_map: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dd, d avg, d max, d fc1, d fc2, d sa, d project)."""
    from hdkd.kernels import channel_spatial_attention_project as kernels
    dd, davg, dmax, *dweights = kernels.backward(
        grad, d, fc1, fc2, sa, project, ch_sum, mx, ties, ca, pooled, pixel_ties, sa_map)
    return dd, davg, dmax, *(g.contiguous() for g in dweights)


@channel_spatial_attention_project_backward.register_fake
def _(grad, d, mx, ties, fc1, fc2, sa, project, *saved):
    return (torch.empty_like(d), torch.empty_like(mx), torch.empty_like(mx),
            *(empty_plain(t, t.shape) for t in (fc1, fc2, sa, project)))


def _setup(ctx, inputs, output):
    d, _, mx, ties, fc1, fc2, sa, project = inputs
    ctx.save_for_backward(d, mx, ties, fc1, fc2, sa, project, *output[1:])


def _grad(ctx, grad, *_unused):
    dd, davg, dmax, dfc1, dfc2, dsa, dproject = channel_spatial_attention_project_backward(
        grad, *ctx.saved_tensors)
    return dd, davg, dmax, None, dfc1, dfc2, dsa, dproject


channel_spatial_attention_project_forward.register_autograd(_grad, setup_context=_setup)


def channel_spatial_attention_project(d: Tensor, avg: Tensor, mx: Tensor, ties: Tensor,
                                      fc1_weight: Tensor, fc2_weight: Tensor, sa_weight: Tensor,
                                      project_weight: Tensor) -> Tensor:
    """conv1x1(channel_spatial_attention(d), project_weight), the attention output never stored;
    avg, mx, ties: d's per-channel average, max and number of pixels at the max (float32,
    B x C)."""
    return channel_spatial_attention_project_forward(d, avg, mx, ties, fc1_weight, fc2_weight,
                                                     sa_weight, project_weight)[0]
