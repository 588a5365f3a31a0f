"""ConvBNGELU: the stem block (conv k x k -> BN -> GELU)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.checks import check_activation
from ._validate import odd_kernel, positive_int


class ConvBNGELU(nn.Module):
    """Conv k x k (stride 2 when downsample, padding k//2, no bias) -> BatchNorm2d -> GELU."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 3, downsample: bool = False):
        super().__init__()
        positive_int("ConvBNGELU", "inp", inp)
        positive_int("ConvBNGELU", "oup", oup)
        odd_kernel("ConvBNGELU", "kernel_size", kernel_size)
        self.conv = nn.Conv2d(inp, oup, kernel_size, 2 if downsample else 1, kernel_size // 2,
                              bias=False)
        self.norm = nn.BatchNorm2d(oup)

    def forward(self, x: Tensor) -> Tensor:
        check_activation("ConvBNGELU", "input", x, channels=self.conv.in_channels)
        return F.gelu(self.norm(self.conv(x)))
