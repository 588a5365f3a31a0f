"""The MBCSA block in eval mode from folded weights (reference.fold_mbcsa), as five launches:

  1. expand: e = GELU(x @ We^T + be) (strided when downsampling)        GEMM, writes e
  2. d = GELU(dwconv(e) + bd) with per-channel avg / max                 reads e, writes d
  3. ca = channel gate from those statistics                              B x C work
  4. per-pixel mean / max of d * ca, 7x7 conv + sigmoid -> sa             reads d
  5. project: out = (d * (ca * sa + 1)) @ Wp^T + bp + shortcut(x)       GEMM, reads d
The 4x-wide hidden activation is written twice (e, d) and read three times; the attention output
and the project's pre-BN value never reach memory.
"""
from __future__ import annotations

import torch

from hdkd.ops.rules import conv_out_hw

from . import channel_spatial_attention as csa
from . import dwconv_bn_gelu as dw
from .pointwise_conv import pointwise_conv


def forward(x: torch.Tensor, f) -> torch.Tensor:
    """f: a FoldedMBCSA (float32 or x's dtype). Returns the block output in x's memory format."""
    B, _, H, W = x.shape
    stride = 1 if f.shortcut is None else 2
    Ho, Wo = conv_out_hw(x, 1, stride)
    hidden = f.expand_weight.shape[0]
    e = torch.empty(B, hidden, Ho, Wo, device=x.device, dtype=x.dtype,
                    memory_format=torch.channels_last)
    pointwise_conv(x, f.expand_weight, f.expand_bias.float(), (Ho, Wo), in_stride=stride,
                   gelu_out=True, out=e)
    ones = torch.ones(hidden, device=x.device, dtype=torch.float32)
    d, avg, mx, _ = dw.forward(e, f.dw_weight.contiguous(), ones, f.dw_bias.float(), 1)
    ca = csa.channel_gate(avg, mx, f.ca_fc1, f.ca_fc2, 1)
    _, _, s = csa.spatial_gate(d, ca, f.sa_weight)
    out = torch.empty(B, f.project_weight.shape[0], Ho, Wo, device=x.device, dtype=x.dtype,
                      memory_format=torch.channels_last if _is_channels_last(x)
                      else torch.contiguous_format)
    return pointwise_conv(d, f.project_weight, f.project_bias.float(), (Ho, Wo), gate=(ca, s),
                          residual=x, shortcut_weight=f.shortcut, out=out)


def _is_channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
