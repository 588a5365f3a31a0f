"""The CNN teacher (docs/model.md, section 10)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ..nn._validate import positive_int
from .stages import StagedModel

_POOLS = ("avg", "")


class HDKDTeacher(StagedModel):
    """stage1: 6 ConvBNGELU 3 -> 64, stage2: 6 MBCSA 64 -> 96, stage3: 9 MBCSA 96 -> 192, then
    global average pool -> Linear(192, 128) -> Linear(128, num_classes).

    num_classes=0 leaves the classifier out (the output is the 128 pre-logits);
    global_pool="" leaves out the whole head (the output is the stage-3 map)."""

    def __init__(self, num_classes: int = 7, img_size: int = 224, in_chans: int = 3,
                 depths=(6, 6, 9), widths=(64, 96, 192), global_pool: str = "avg",
                 backend: str = "auto", scriptable: bool = False):
        super().__init__()
        positive_int("HDKDTeacher", "img_size", img_size)
        self.set_head_options(num_classes, global_pool, _POOLS)
        self.init_stages(img_size, in_chans, depths, widths, backend, scriptable)
        self.fc = nn.Linear(widths[2], 128)
        self.head_hidden_size = 128
        self.classifier = nn.Linear(128, num_classes) if num_classes else nn.Identity()

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Stage-3 map -> logits (pre_logits: the 128 features before the classifier)."""
        if not self.global_pool:
            return x
        x = self.fc(x.mean(dim=(2, 3)))
        return x if pre_logits else self.classifier(x)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new, freshly initialised classifier for num_classes (0: none)."""
        pool = self.global_pool if global_pool is None else global_pool
        self.set_head_options(num_classes, pool, _POOLS)
        w = self.fc.weight
        self.classifier = (nn.Linear(128, num_classes, device=w.device, dtype=w.dtype)
                           if num_classes else nn.Identity())
