"""Channel-spatial attention with its residual (docs/model.md, section 5) and its two halves,
ChannelAttention and SpatialAttention."""
from __future__ import annotations

from torch import Tensor, nn

from .. import ops
from ..ops import reference
from ..ops.checks import check_activation
from ._validate import odd_kernel, positive_int


class ChannelAttention(nn.Module):
    """Gate sigmoid(MLP(avgpool(h)) + MLP(maxpool(h))), B x C x 1 x 1; the MLP is two bias-free
    1x1 convs C -> max(C // ratio, 1) -> C with GELU between."""

    def __init__(self, channels: int, ratio: int = 16):
        super().__init__()
        positive_int("ChannelAttention", "channels", channels)
        positive_int("ChannelAttention", "ratio", ratio)
        reduced = max(channels // ratio, 1)
        self.fc1 = nn.Conv2d(channels, reduced, 1, bias=False)
        self.fc2 = nn.Conv2d(reduced, channels, 1, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        check_activation("ChannelAttention", "input", h, channels=self.fc1.in_channels)
        return reference.channel_attention(h, self.fc1.weight, self.fc2.weight)


class SpatialAttention(nn.Module):
    """Gate sigmoid(conv k x k([mean_c(u), max_c(u)])), B x 1 x H x W."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        odd_kernel("SpatialAttention", "kernel_size", kernel_size)
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, u: Tensor) -> Tensor:
        check_activation("SpatialAttention", "input", u)
        return reference.spatial_attention(u, self.conv.weight)


class ChannelSpatialAttention(nn.Module):
    """Channel then spatial attention, with the residual: h * ca * sa + h. The fused op runs on
    the selected backend ("auto", "torch", "triton", "ext"). The paper calls it CBAM; hdkd.nn.CBAM
    is this class under that name."""

    def __init__(self, channels: int, ratio: int = 16, kernel_size: int = 7,
                 backend: str = "auto"):
        super().__init__()
        self.channel_attention = ChannelAttention(channels, ratio)
        self.spatial_attention = SpatialAttention(kernel_size)
        self.backend = ops.validate_backend_name(backend)

    def forward(self, h: Tensor) -> Tensor:
        check_activation("ChannelSpatialAttention", "input", h,
                         channels=self.channel_attention.fc1.in_channels)
        return ops.channel_spatial_attention(h, self.channel_attention.fc1.weight,
                                             self.channel_attention.fc2.weight,
                                             self.spatial_attention.conv.weight,
                                             backend=self.backend)
