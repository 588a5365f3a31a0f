"""The channel-spatial attention followed by the block's 1x1 project conv, for the training
path: the attention output h = d * (ca * sa + 1) never reaches memory, forward or backward.
The forward applies the gates while the project GEMM loads its input; the backward computes
dL/dh = grad_v @ Wp with the same GEMM kernel and the project's weight gradient with a GEMM over
the pixels whose loader gates d again. Only d and the small gate statistics are saved.

Bytes over the hidden tensor d: forward 2 reads (per-pixel pooling, GEMM; the channel statistics
come from the depthwise pass);
backward 1 read for the weight gradient, dL/dh written once, then the attention backward.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import channel_spatial_attention as csa
from ._config import configs, dot_dtype, strides
from .pointwise_conv import _mma, pointwise_conv


@triton.autotune(configs(gpu=[dict(BLOCK_M=64, BLOCK_N=128, BLOCK_P=64, num_warps=8),
                              dict(BLOCK_M=128, BLOCK_N=128, BLOCK_P=32, num_warps=8),
                              dict(BLOCK_M=64, BLOCK_N=64, BLOCK_P=32, num_warps=4)],
                         interpret=dict(BLOCK_M=16, BLOCK_N=16, BLOCK_P=16), stages=(3, 4)),
                 key=["N", "K", "HW"])
@triton.jit
def _gated_weight_grad_kernel(g_ptr, d_ptr, ca_ptr, s_ptr, part_ptr, N, K, HW, W,
                              stride_g_b, stride_g_c, stride_g_y, stride_g_x,
                              stride_d_b, stride_d_c, stride_d_y, stride_d_x,
                              DOT_DTYPE: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr):
    """part[b, n, k] = sum_p g[b, n, p] * d[b, k, p] * (ca[b, k] * sa[b, p] + 1): one image per
    program column, summed over the batch on the host."""
    b = tl.program_id(2)
    offs_n = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    kmask = offs_k < K
    ca = tl.load(ca_ptr + b * K + offs_k, mask=kmask, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for p0 in range(0, HW, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        pmask = offs_p < HW
        py = offs_p // W
        px = offs_p % W
        g = tl.load(g_ptr + b * stride_g_b + offs_n[:, None] * stride_g_c
                    + (py * stride_g_y + px * stride_g_x)[None, :],
                    mask=nmask[:, None] & pmask[None, :], other=0.0)
        s = tl.load(s_ptr + b * HW + offs_p, mask=pmask, other=0.0)
        d = tl.load(d_ptr + b * stride_d_b + (py * stride_d_y + px * stride_d_x)[:, None]
                    + offs_k[None, :] * stride_d_c, mask=pmask[:, None] & kmask[None, :],
                    other=0.0)
        h = d.to(tl.float32) * (ca[None, :] * s[:, None] + 1.0)
        acc = _mma(g, h, acc, DOT_DTYPE)
    tl.store(part_ptr + (b * N + offs_n[:, None]) * K + offs_k[None, :], acc,
             mask=nmask[:, None] & kmask[None, :])


def forward(d, avg, mx, ties, fc1_weight, fc2_weight, sa_weight, project_weight):
    """(v = conv1x1(channel_spatial_attention(d), project_weight) without bias, *statistics
    for backward).
    avg, mx, ties: d's per-channel average, max and ties at the max (float32, B x C), which the
    depthwise pass that produced d has already computed."""
    stats = (avg * (d.shape[2] * d.shape[3]), mx, ties)
    saved = csa.gates(d, fc1_weight, fc2_weight, sa_weight, stats)
    ca, s = saved[3], saved[6]
    zero_bias = torch.zeros(project_weight.shape[0], device=d.device, dtype=torch.float32)
    v = pointwise_conv(d, project_weight, zero_bias, d.shape[2:], gate=(ca, s))
    return (v, *saved)


def backward(grad_v, d, fc1_weight, fc2_weight, sa_weight, project_weight, ch_sum, ch_max,
             ch_ties, ca, pooled, pixel_ties, s):
    """(dd, d avg, d max, d fc1, d fc2, d sa_weight, d project_weight); dd leaves out the
    share that flows through avg and max."""
    B, C, H, W = d.shape
    N = project_weight.shape[0]
    grad_v = grad_v.to(d.dtype)
    part = torch.empty(B, N, C, device=d.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), triton.cdiv(C, meta["BLOCK_N"]), B)
    _gated_weight_grad_kernel[grid](g_ptr=grad_v, d_ptr=d, ca_ptr=ca, s_ptr=s, part_ptr=part,
                                    N=N, K=C, HW=H * W, W=W, **strides("g", grad_v),
                                    **strides("d", d), DOT_DTYPE=dot_dtype(d.dtype))
    grad_w = part.sum(0).view_as(project_weight).to(project_weight.dtype)
    zero_bias = torch.zeros(C, device=d.device, dtype=torch.float32)
    grad_h = pointwise_conv(grad_v, project_weight.reshape(N, C).t(), zero_bias, (H, W))
    dd, dfc1, dfc2, dsa, davg, dmax = csa.backward_with_stats_grad(
        grad_h, d, fc1_weight, fc2_weight, sa_weight, ch_sum, ch_max, ch_ties, ca, pooled,
        pixel_ties, s)
    return dd, davg, dmax, dfc1, dfc2, dsa, grad_w
