"""The hybrid CNN + transformer student (docs/model.md, section 10)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..nn import DFLT
from ..nn._validate import positive_int
from .scriptable import ScriptableDFLT
from .stages import StagedModel, stage_output_size

_POOLS = ("token", "")


class HDKDStudent(StagedModel):
    """stage1: 2 ConvBNGELU 3 -> 64, stage2: 2 MBCSA 64 -> 96, stage3: 3 MBCSA 96 -> 192, then
    DFLT and a class head (and a distillation head when distillation=True).

    Output: logits; with distillation, (class_logits, distillation_logits) in training mode and
    their mean in eval mode (set_distilled_training(False): the mean in training too). img_size
    must be a multiple of 16 (the 2 x 2 patches tile the img_size / 8 feature map).

    For timm, the DFLT is the student's pooling (global_pool="token": it turns the stage-3 map
    into token features); global_pool="" leaves out the DFLT and the heads (the output is the
    stage-3 map), num_classes=0 the heads (the output is the token features)."""

    __constants__ = ["distillation"]  # TorchScript compiles only the branches that apply

    def __init__(self, num_classes: int = 7, img_size: int = 224, in_chans: int = 3,
                 distillation: bool = True, depths=(2, 2, 3), widths=(64, 96, 192),
                 dim: int = 256, depth: int = 3, heads: int = 8, head_dim: int = 32,
                 mlp_ratio: int = 4, dropout: float = 0.0, emb_dropout: float = 0.0,
                 global_pool: str = "token", distilled_training: bool = True,
                 backend: str = "auto", scriptable: bool = False):
        super().__init__()
        positive_int("HDKDStudent", "img_size", img_size)
        if img_size % 16:
            raise ValueError(f"HDKDStudent: expected img_size to be a multiple of 16 (the 2 x 2 "
                             f"patches tile the img_size / 8 feature map), got {img_size}")
        self.set_head_options(num_classes, global_pool, _POOLS)
        self.distillation, self.distilled_training = distillation, distilled_training
        self.init_stages(img_size, in_chans, depths, widths, backend, scriptable)
        feat = stage_output_size(img_size)
        dflt = ScriptableDFLT if scriptable else DFLT
        self.dflt = dflt(widths[2], (feat, feat), 2, dim, depth, heads, head_dim, mlp_ratio,
                         distillation, dropout, emb_dropout, backend)
        self.head_hidden_size = dim
        self.head = self._new_head(num_classes)
        self.head_dist = self._new_head(num_classes) if distillation else None

    def forward_head(self, x: Tensor, pre_logits: bool = False):
        """Stage-3 map -> DFLT -> heads. pre_logits: the class-token feature (with distillation,
        the mean of the class and distillation token features)."""
        if not self.global_pool:
            return x
        if not self.distillation:
            token = self.dflt(x)
            return token if pre_logits else self.head(token)
        cls_token, dist_token = self.dflt(x)
        if pre_logits:
            return (cls_token + dist_token) / 2
        cls, dist = self.head(cls_token), self.head_dist(dist_token)
        if not torch.jit.is_scripting():  # TorchScript: one output type, the mean (as timm's DeiT)
            if self.training and self.distilled_training:
                return cls, dist
        return (cls + dist) / 2

    def set_distilled_training(self, enable: bool = True) -> None:
        """Training-mode output: both heads' logits (True, the default, what distillation
        trains) or their mean (False, for plain fine-tuning)."""
        self.distilled_training = enable

    def get_classifier(self):
        return (self.head, self.head_dist) if self.distillation else self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """New, freshly initialised heads for num_classes (0: none)."""
        pool = self.global_pool if global_pool is None else global_pool
        self.set_head_options(num_classes, pool, _POOLS)
        self.head = self._new_head(num_classes)
        if self.distillation:
            self.head_dist = self._new_head(num_classes)

    def _new_head(self, num_classes: int) -> nn.Module:
        if not num_classes:
            return nn.Identity()
        ref = self.dflt.cls_token
        return nn.Linear(self.head_hidden_size, num_classes, device=ref.device, dtype=ref.dtype)
