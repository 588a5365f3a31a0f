"""The MBCSA block on the extension: fake of the inference-only op <namespace>::mbcsa_eval
(schemas: csrc/schemas.h), and the backend's implementations of mbcsa_train and mbcsa_eval:
the whole-block kernel when no gradient is needed, else composed of the fused depthwise and
attention ops (which have autograd) with ATen 1x1 convs and BNs."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import reference
from ..reference import FoldedMBCSA, MBCSAWeights
from ..rules import conv_out_hw, empty_like_input, mbcsa_records_grad
from .channel_spatial_attention import channel_spatial_attention
from .devices import runs_kernels
from .dwconv_bn_gelu import dwconv_bn_gelu


def _eval_fake(x, expand_w, expand_b, dw_w, dw_b, fc1, fc2, sa, project_w, project_b, shortcut):
    hw = conv_out_hw(x, 1, 1 if shortcut is None else 2)
    return empty_like_input(x, (x.shape[0], project_w.shape[0], *hw))


def register(namespace: str) -> None:
    """The fake of the block's op in `namespace` (inference only: no autograd)."""
    torch.library.register_fake(f"{namespace}::mbcsa_eval", _eval_fake)


def _composed(x: Tensor, w: MBCSAWeights, training: bool, momentum: float, eps: float) -> Tensor:
    """The block from the fused depthwise and attention ops plus ATen convs and BNs."""
    stride = 1 if w.shortcut is None else 2
    z = reference.batch_norm(x, w.pre_norm, training, momentum, eps)
    e = F.gelu(reference.batch_norm(F.conv2d(z, w.expand, stride=stride), w.expand_norm,
                                    training, momentum, eps))
    d, _, _ = dwconv_bn_gelu(e, w.dw, w.dw_norm, training, momentum, eps)
    h = channel_spatial_attention(d, w.ca_fc1, w.ca_fc2, w.sa_weight)
    body = reference.batch_norm(F.conv2d(h, w.project), w.project_norm, training, momentum, eps)
    return reference.mbcsa_shortcut(x, w.shortcut) + body


def mbcsa_train(x: Tensor, w: MBCSAWeights, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    if not runs_kernels(x, w.dw) or w.expand is None:
        return reference.mbcsa(x, w, True, momentum, eps)
    return _composed(x, w, True, momentum, eps)


def mbcsa_eval(x: Tensor, w: MBCSAWeights, momentum: float = 0.1, eps: float = 1e-5,
               folded: Optional[FoldedMBCSA] = None) -> Tensor:
    """folded: reference.fold_mbcsa_float32(w, eps) when the caller has it cached."""
    if not runs_kernels(x, w.dw) or w.expand is None:
        return reference.mbcsa(x, w, False, momentum, eps)
    if mbcsa_records_grad(x, w):
        return _composed(x, w, False, momentum, eps)
    if folded is not None:
        return torch.ops.hdkd.mbcsa_eval(x, *folded)
    pre_scale, pre_shift = reference.fold_batch_norm(w.pre_norm, eps)
    e_scale, e_shift = reference.fold_batch_norm(w.expand_norm, eps)
    expand = w.expand.flatten(1)
    # reference.fold_mbcsa, with the bias's matrix-vector product written as a reduction so
    # that FLOP counters (hdkd.flops) see exactly the reference's FLOPs for this fused path
    expand_weight = (e_scale[:, None] * expand * pre_scale[None, :])[:, :, None, None]
    expand_bias = e_scale * (expand * pre_shift[None, :]).sum(1) + e_shift
    dw_weight, dw_bias = reference.fold_conv_batch_norm(w.dw, w.dw_norm, eps)
    project_weight, project_bias = reference.fold_conv_batch_norm(w.project, w.project_norm, eps)
    return torch.ops.hdkd.mbcsa_eval(x, expand_weight, expand_bias, dw_weight, dw_bias, w.ca_fc1,
                                     w.ca_fc2, w.sa_weight, project_weight, project_bias,
                                     w.shortcut)


def prepare_folded(x: Tensor, folded: FoldedMBCSA) -> FoldedMBCSA:
    """The CPU kernel multiplies in bfloat16 when x is bfloat16: its GEMM weights (expand,
    project, shortcut) cast to it once, not on every call. The rest stays float32."""
    if x.device.type != "cpu" or x.dtype != torch.bfloat16:
        return folded
    def cast(t):
        return None if t is None else t.to(torch.bfloat16)
    return folded._replace(expand_weight=cast(folded.expand_weight),
                           project_weight=cast(folded.project_weight),
                           shortcut=cast(folded.shortcut))
