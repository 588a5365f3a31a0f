"""CBAM followed by the block's 1x1 project conv, for the training path: the attention output
h = d * (ca * sa + 1) never reaches memory in the forward (the gates are applied while the
project GEMM loads its input), and only d and the small gate statistics are saved; the backward
rebuilds h once, transiently, for the project's weight gradient.

Forward bytes over the hidden tensor d: 3 reads (channel statistics, per-pixel pooling, GEMM).
"""
from __future__ import annotations

import torch

from . import channel_spatial_attention as csa
from .pointwise_conv import pointwise_conv


def forward(d, fc1_weight, fc2_weight, sa_weight, project_weight):
    """(v = conv1x1(CBAM(d), project_weight) without bias, *statistics for backward)."""
    saved = csa.gates(d, fc1_weight, fc2_weight, sa_weight)
    ca, s = saved[3], saved[6]
    zero_bias = torch.zeros(project_weight.shape[0], device=d.device, dtype=torch.float32)
    v = pointwise_conv(d, project_weight, zero_bias, d.shape[2:], gate=(ca, s))
    return (v, *saved)


def backward(grad_v, d, fc1_weight, fc2_weight, sa_weight, project_weight, ch_sum, ch_max,
             ch_cnt, ca, pooled, pcnt, s):
    """(dd, d fc1, d fc2, d sa_weight, d project_weight)."""
    h = csa.apply_gates(d, ca, s)
    w = project_weight.to(h.dtype)
    grad_h, grad_w, _ = torch.ops.aten.convolution_backward(
        grad_v.to(h.dtype), h, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
        [True, True, False])
    del h
    dd, dfc1, dfc2, dsa = csa.backward(grad_h, d, fc1_weight, fc2_weight, sa_weight, ch_sum,
                                       ch_max, ch_cnt, ca, pooled, pcnt, s)
    return dd, dfc1, dfc2, dsa, grad_w.to(project_weight.dtype)
