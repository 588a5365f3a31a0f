"""The MBCSA block on Triton: the fused eval kernel as custom op hdkd_triton::mbcsa_eval
(kernels/mbcsa_eval.py; inference only, no autograd), the differentiable block composed of the
Triton stages, and the backend's implementations of mbcsa_train and mbcsa_eval."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import reference
from ..reference import FoldedMBCSA, MBCSAWeights
from ..rules import conv_out_hw, empty_like_input, mbcsa_records_grad, update_running_stats
from .channel_spatial_attention_project import channel_spatial_attention_project
from .dwconv_bn_gelu import dwconv_bn_gelu, dwconv_bn_gelu_forward
from .expand_bn_gelu import expand_bn_gelu
from .shared import autocast_input, check_hidden_extent, triton_op


@triton_op("mbcsa_eval")
def mbcsa_eval_op(x: Tensor, expand_weight: Tensor, expand_bias: Tensor, dw_weight: Tensor,
                  dw_bias: Tensor, ca_fc1: Tensor, ca_fc2: Tensor, sa_weight: Tensor,
                  project_weight: Tensor, project_bias: Tensor,
                  shortcut: Optional[Tensor]) -> Tensor:
    """Inference only (no autograd): the fused eval block from folded weights."""
    from hdkd.kernels import mbcsa_eval as kernel
    check_hidden_extent("mbcsa_eval", x, expand_weight.shape[0], 1 if shortcut is None else 2)
    folded = FoldedMBCSA(expand_weight, expand_bias, dw_weight, dw_bias, ca_fc1, ca_fc2,
                         sa_weight, project_weight, project_bias, shortcut)
    return kernel.forward(x, folded)


@mbcsa_eval_op.register_fake
def _(x, expand_weight, expand_bias, dw_weight, dw_bias, ca_fc1, ca_fc2, sa_weight,
      project_weight, project_bias, shortcut):
    hw = conv_out_hw(x, 1, 1 if shortcut is None else 2)
    return empty_like_input(x, (x.shape[0], project_weight.shape[0], *hw))


def _composed(x: Tensor, w: MBCSAWeights, training: bool, momentum: float, eps: float) -> Tensor:
    """The block from the Triton stages (expand, depthwise, attention + project), torch for the
    cin/cout-wide pre-norm, project BN and shortcut; differentiable, train or eval. Only e and d
    of the 4x-wide tensors are saved for the backward."""
    stride = 1 if w.shortcut is None else 2

    def bn(t, s):
        return F.batch_norm(t, s.running_mean, s.running_var, s.weight, s.bias, training,
                            momentum, eps)

    z = bn(x, w.pre_norm)
    if w.expand is None:
        h, _, _ = dwconv_bn_gelu(z, w.dw, w.dw_norm, training, momentum, eps, stride=stride)
        v = F.conv2d(h, w.project)
    else:
        e = expand_bn_gelu(z, w.expand, w.expand_norm, training, momentum, eps, stride)
        dn = w.dw_norm
        d, avg, mx, ties, mean, _, var_unbiased = dwconv_bn_gelu_forward(
            e, w.dw, dn.weight, dn.bias, dn.running_mean, dn.running_var, training, eps, 1)
        if training:
            update_running_stats(dn, mean, var_unbiased, momentum)
        v = channel_spatial_attention_project(d, avg, mx, ties, w.ca_fc1, w.ca_fc2, w.sa_weight,
                                              w.project)
    body = bn(v, w.project_norm)
    return reference.mbcsa_shortcut(x, w.shortcut) + body


def mbcsa_train(x: Tensor, w: MBCSAWeights, momentum: float, eps: float) -> Tensor:
    if x.dtype == torch.float64:
        return reference.mbcsa(x, w, True, momentum, eps)
    return _composed(x, w, True, momentum, eps)


def mbcsa_eval(x: Tensor, w: MBCSAWeights, momentum: float, eps: float,
               folded: Optional[FoldedMBCSA] = None) -> Tensor:
    """folded: reference.fold_mbcsa_float32(w, eps) when the caller has it cached."""
    if x.dtype == torch.float64:
        return reference.mbcsa(x, w, False, momentum, eps)
    if w.expand is None or mbcsa_records_grad(x, w):
        return _composed(x, w, False, momentum, eps)
    if folded is None:
        with torch.no_grad():
            folded = reference.fold_mbcsa_float32(w, eps)
    return mbcsa_eval_op(autocast_input(x), *folded)
