"""TorchScript-compatible twins of hdkd.nn's ConvBNGELU, MBCSA and DFLT, for models built with
scriptable=True (what timm's set_scriptable / create_model(scriptable=True) asks for).

Each subclasses its hdkd.nn block, so its parameters, buffers and state_dict keys are the same,
and replaces the forward (fused ops behind Python dispatch and argument checks) with the
reference computation in plain PyTorch (hdkd.ops.reference) that torch.jit.script compiles. The
BN running statistics update in training as nn.BatchNorm2d updates them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import DFLT, MBCSA, ConvBNGELU
from ..nn.dflt import patchify


class ScriptableConvBNGELU(ConvBNGELU):
    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.norm(self.conv(x)))


class _ChannelGate(nn.Module):
    """sigmoid(MLP(avgpool(h)) + MLP(maxpool(h))), with hdkd.nn.ChannelAttention's parameters."""

    def __init__(self, channels: int, ratio: int = 16):
        super().__init__()
        reduced = max(channels // ratio, 1)
        self.fc1 = nn.Conv2d(channels, reduced, 1, bias=False)
        self.fc2 = nn.Conv2d(reduced, channels, 1, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        avg = self.fc2(F.gelu(self.fc1(h.mean(dim=(2, 3), keepdim=True))))
        mx = self.fc2(F.gelu(self.fc1(h.amax(dim=(2, 3), keepdim=True))))
        return torch.sigmoid(avg + mx)


class _SpatialGate(nn.Module):
    """sigmoid(conv k x k([mean_c(u), max_c(u)])), with hdkd.nn.SpatialAttention's parameter."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, u: Tensor) -> Tensor:
        pooled = torch.cat([u.mean(dim=1, keepdim=True), u.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class _ChannelSpatialAttention(nn.Module):
    """h * ca * sa + h, with hdkd.nn.ChannelSpatialAttention's parameter names."""

    def __init__(self, channels: int):
        super().__init__()
        self.channel_attention = _ChannelGate(channels)
        self.spatial_attention = _SpatialGate()

    def forward(self, h: Tensor) -> Tensor:
        u = h * self.channel_attention(h)
        return u * self.spatial_attention(u) + h


class ScriptableMBCSA(MBCSA):
    """An expansion > 1 MBCSA block (the models' only kind)."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 3, downsample: bool = False):
        super().__init__(inp, oup, kernel_size, downsample)
        self.attention = _ChannelSpatialAttention(self.hidden)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.expand_norm(self.expand(self.pre_norm(x))))
        h = self.attention(F.gelu(self.dw_norm(self.dw(h))))
        out = self.project_norm(self.project(h))
        if self.shortcut is not None:
            x = self.shortcut(F.max_pool2d(x, 3, 2, 1))
        return x + out


class ScriptableDFLT(DFLT):
    __constants__ = ["distillation", "patch_size"]

    def forward(self, x: Tensor):
        tokens = self.embed_norm(self.patch_proj(self.patch_norm(patchify(x, self.patch_size))))
        lead = self.cls_token.expand(tokens.shape[0], -1, -1)
        if self.distillation:
            lead = torch.cat([lead, self.dist_token.expand(tokens.shape[0], -1, -1)], dim=1)
        x = self.pos_drop(torch.cat([lead, tokens], dim=1) + self.pos_embed)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        if self.distillation:
            return x[:, 0], x[:, 1]
        return x[:, 0]
