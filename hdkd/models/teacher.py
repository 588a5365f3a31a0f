"""The CNN teacher (MODEL.md, "Teacher")."""
from __future__ import annotations

from torch import Tensor, nn

from ..nn._validate import positive_int
from .stages import check_input, make_stages


class HDKDTeacher(nn.Module):
    """stage1: 6 ConvBNGELU 3 -> 64, stage2: 6 MBCSA 64 -> 96, stage3: 9 MBCSA 96 -> 192, then
    global average pool -> Linear(192, 128) -> Linear(128, num_classes)."""

    def __init__(self, num_classes: int = 7, img_size: int = 224, in_chans: int = 3,
                 depths=(6, 6, 9), widths=(64, 96, 192), backend: str = "auto"):
        super().__init__()
        positive_int("HDKDTeacher", "num_classes", num_classes)
        positive_int("HDKDTeacher", "img_size", img_size)
        self.num_classes, self.img_size, self.in_chans = num_classes, img_size, in_chans
        self.stage1, self.stage2, self.stage3 = make_stages(in_chans, depths, widths, backend)
        self.fc = nn.Linear(widths[2], 128)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: Tensor, return_features: bool = False):
        """Logits; with return_features, (logits, [stage1, stage2, stage3 outputs]) from the
        same single pass."""
        check_input("HDKDTeacher", x, self.in_chans, self.img_size)
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        logits = self.classifier(self.fc(f3.mean(dim=(2, 3))))
        return (logits, [f1, f2, f3]) if return_features else logits
