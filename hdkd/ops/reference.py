"""Plain-PyTorch ground truth for every hdkd op (docs/model.md).

Every fast path (Triton, the compiled extension) is tested against these functions. They are written
for clarity, compute in the input's dtype like eager PyTorch does, and are differentiable end to end
(float64 gradcheck in tests/test_reference.py).

Shapes: activations are B x C x H x W (any memory format); per-channel statistics are B x C.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


class BatchNormState(NamedTuple):
    """The four tensors of a BatchNorm2d; running statistics are updated in place in training."""

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor


def batch_norm(x: Tensor, bn: BatchNormState, training: bool, momentum: float = 0.1,
               eps: float = 1e-5) -> Tensor:
    """BatchNorm2d: batch statistics and a running-statistics update in training, running
    statistics in eval (exactly nn.BatchNorm2d with a fixed momentum)."""
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training,
                        momentum, eps)


def fold_batch_norm(bn: BatchNormState, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Eval-mode BN as a per-channel affine: BN(x) == x * scale + shift."""
    scale = bn.weight * torch.rsqrt(bn.running_var + eps)
    shift = bn.bias - bn.running_mean * scale
    return scale, shift


def fold_conv_batch_norm(conv_weight: Tensor, bn: BatchNormState,
                         eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """BN(conv(x, W)) == conv(x, W', b') for eval-mode BN; returns (W', b')."""
    scale, shift = fold_batch_norm(bn, eps)
    return conv_weight * scale.view(-1, *([1] * (conv_weight.dim() - 1))), shift


# ---------------------------------------------------------------- channel-spatial attention

def channel_gate(avg: Tensor, mx: Tensor, fc1_weight: Tensor, fc2_weight: Tensor) -> Tensor:
    """sigmoid(MLP(avg) + MLP(max)) from the pooled statistics (B x C) -> B x C.

    fc1_weight: (C//16) x C x 1 x 1, fc2_weight: C x (C//16) x 1 x 1 (the original stores 1x1 convs).
    """
    w1 = fc1_weight.flatten(1)
    w2 = fc2_weight.flatten(1)

    def mlp(s: Tensor) -> Tensor:
        return F.linear(F.gelu(F.linear(s, w1)), w2)

    return torch.sigmoid(mlp(avg) + mlp(mx))


def channel_stats(h: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel global average and max over H x W: two B x C tensors."""
    return h.mean(dim=(2, 3)), h.amax(dim=(2, 3))


def channel_attention(h: Tensor, fc1_weight: Tensor, fc2_weight: Tensor) -> Tensor:
    """The channel half of the channel-spatial attention: B x C x 1 x 1 gate."""
    avg, mx = channel_stats(h)
    return channel_gate(avg, mx, fc1_weight, fc2_weight)[:, :, None, None]


def spatial_attention(u: Tensor, conv_weight: Tensor) -> Tensor:
    """The spatial half of the channel-spatial attention: sigmoid(conv7x7([mean_c(u),
    max_c(u)])), B x 1 x H x W."""
    pooled = torch.cat([u.mean(dim=1, keepdim=True), u.amax(dim=1, keepdim=True)], dim=1)
    return torch.sigmoid(F.conv2d(pooled, conv_weight, padding=conv_weight.shape[-1] // 2))


def channel_spatial_attention(h: Tensor, fc1_weight: Tensor, fc2_weight: Tensor,
                              sa_weight: Tensor, avg: Optional[Tensor] = None,
                              mx: Optional[Tensor] = None) -> Tensor:
    """Channel-spatial attention with its residual: u = h*ca(h); out = u*sa(u) + h.

    avg / mx: the per-channel statistics of h when already known (the fused depthwise path emits
    them); computed from h when omitted.
    """
    if avg is None or mx is None:
        avg, mx = channel_stats(h)
    u = h * channel_gate(avg, mx, fc1_weight, fc2_weight)[:, :, None, None]
    return u * spatial_attention(u, sa_weight) + h


# ---------------------------------------------------------------- depthwise conv + BN + GELU

def dwconv_bn_gelu(x: Tensor, dw_weight: Tensor, bn: BatchNormState, training: bool,
                   momentum: float = 0.1, eps: float = 1e-5,
                   stride: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """GELU(BN(depthwise_conv_kxk(x))) and the per-channel average and max of that output.

    dw_weight: C x 1 x k x k, padding k//2. Returns (y, avg, max) with avg, max of shape B x C.
    """
    k = dw_weight.shape[-1]
    y = F.conv2d(x, dw_weight, stride=stride, padding=k // 2, groups=x.shape[1])
    y = F.gelu(batch_norm(y, bn, training, momentum, eps))
    avg, mx = channel_stats(y)
    return y, avg, mx


# ---------------------------------------------------------------- MBCSA block

class MBCSAWeights(NamedTuple):
    """Every tensor of one MBCSA block. expand/expand_norm/ca_*/sa_weight are None when expansion
    is 1 (the original then has no expand conv and no attention); shortcut is the 1x1 conv after
    the max-pool of a downsampling block, None otherwise."""

    pre_norm: BatchNormState
    expand: Optional[Tensor]
    expand_norm: Optional[BatchNormState]
    dw: Tensor
    dw_norm: BatchNormState
    ca_fc1: Optional[Tensor]
    ca_fc2: Optional[Tensor]
    sa_weight: Optional[Tensor]
    project: Tensor
    project_norm: BatchNormState
    shortcut: Optional[Tensor]


def mbcsa_shortcut(x: Tensor, shortcut: Optional[Tensor]) -> Tensor:
    """Identity, or MaxPool(3, 2, 1) then a 1x1 conv when downsampling."""
    if shortcut is None:
        return x
    return F.conv2d(F.max_pool2d(x, 3, 2, 1), shortcut)


def mbcsa(x: Tensor, w: MBCSAWeights, training: bool, momentum: float = 0.1,
          eps: float = 1e-5) -> Tensor:
    """The MBCSA block: shortcut(x) + body(BN_pre(x)), train (batch statistics, running statistics
    updated) or eval (running statistics). Downsampling is implied by w.shortcut."""
    stride = 1 if w.shortcut is None else 2
    z = batch_norm(x, w.pre_norm, training, momentum, eps)
    if w.expand is None:  # expansion 1: depthwise (strided) -> BN -> GELU, no attention
        h, _, _ = dwconv_bn_gelu(z, w.dw, w.dw_norm, training, momentum, eps, stride=stride)
    else:
        e = F.gelu(batch_norm(F.conv2d(z, w.expand, stride=stride), w.expand_norm, training,
                              momentum, eps))
        d, avg, mx = dwconv_bn_gelu(e, w.dw, w.dw_norm, training, momentum, eps)
        h = channel_spatial_attention(d, w.ca_fc1, w.ca_fc2, w.sa_weight, avg, mx)
    body = batch_norm(F.conv2d(h, w.project), w.project_norm, training, momentum, eps)
    return mbcsa_shortcut(x, w.shortcut) + body


class FoldedMBCSA(NamedTuple):
    """An expansion-4 MBCSA block in eval mode with all four BNs folded into its convs:
    pre-norm and expand BN into the expand conv, the others into the conv they follow."""

    expand_weight: Tensor   # hidden x cin x 1 x 1
    expand_bias: Tensor     # hidden
    dw_weight: Tensor       # hidden x 1 x k x k
    dw_bias: Tensor         # hidden
    ca_fc1: Tensor
    ca_fc2: Tensor
    sa_weight: Tensor
    project_weight: Tensor  # cout x hidden x 1 x 1
    project_bias: Tensor    # cout
    shortcut: Optional[Tensor]


def fold_mbcsa(w: MBCSAWeights, eps: float = 1e-5) -> FoldedMBCSA:
    """Fold the eval-mode BNs of an expansion > 1 block. Exact: the expand conv is 1x1 with no
    padding, so the pre-norm affine commutes with it (the expansion-1 body starts with a padded
    depthwise conv, where it would not, so it is not folded)."""
    if w.expand is None:
        raise ValueError("fold_mbcsa: expected a block with expansion > 1 (an expand conv), "
                         "got expansion 1")
    pre_scale, pre_shift = fold_batch_norm(w.pre_norm, eps)
    e_scale, e_shift = fold_batch_norm(w.expand_norm, eps)
    expand = w.expand.flatten(1)
    expand_weight = e_scale[:, None] * expand * pre_scale[None, :]
    expand_bias = e_scale * (expand @ pre_shift) + e_shift
    dw_weight, dw_bias = fold_conv_batch_norm(w.dw, w.dw_norm, eps)
    project_weight, project_bias = fold_conv_batch_norm(w.project, w.project_norm, eps)
    return FoldedMBCSA(expand_weight[:, :, None, None], expand_bias, dw_weight, dw_bias,
                       w.ca_fc1, w.ca_fc2, w.sa_weight, project_weight, project_bias, w.shortcut)


def fold_mbcsa_float32(w: MBCSAWeights, eps: float = 1e-5) -> FoldedMBCSA:
    """fold_mbcsa of the weights widened to float32, which is what the kernels compute in: a
    bfloat16/float16 model's folded weights are not rounded to its dtype."""
    def widen(v):
        if isinstance(v, BatchNormState):
            return BatchNormState(*(t.float() for t in v))
        return None if v is None else v.float()
    return fold_mbcsa(MBCSAWeights(*(widen(v) for v in w)), eps)


def mbcsa_folded(x: Tensor, f: FoldedMBCSA) -> Tensor:
    """Eval-mode MBCSA from folded weights; equals mbcsa(x, w, training=False)."""
    stride = 1 if f.shortcut is None else 2
    e = F.gelu(F.conv2d(x, f.expand_weight, f.expand_bias, stride=stride))
    k = f.dw_weight.shape[-1]
    d = F.gelu(F.conv2d(e, f.dw_weight, f.dw_bias, padding=k // 2, groups=e.shape[1]))
    h = channel_spatial_attention(d, f.ca_fc1, f.ca_fc2, f.sa_weight)
    return mbcsa_shortcut(x, f.shortcut) + F.conv2d(h, f.project_weight, f.project_bias)
