"""The hybrid CNN + transformer student (MODEL.md, "Student")."""
from __future__ import annotations

from torch import Tensor, nn

from ..nn import DFLT
from ..nn._validate import positive_int
from .stages import check_input, make_stages, stage_output_size


class HDKDStudent(nn.Module):
    """stage1: 2 ConvBNGELU 3 -> 64, stage2: 2 MBCSA 64 -> 96, stage3: 3 MBCSA 96 -> 192, then
    DFLT and a class head (and a distillation head when distillation=True).

    Output: logits; with distillation, (class_logits, distillation_logits) in training mode and
    their mean in eval mode. img_size must be a multiple of 16 (the 2 x 2 patches tile the
    img_size / 8 feature map)."""

    def __init__(self, num_classes: int = 7, img_size: int = 224, in_chans: int = 3,
                 distillation: bool = True, depths=(2, 2, 3), widths=(64, 96, 192),
                 dim: int = 256, depth: int = 3, heads: int = 8, head_dim: int = 32,
                 mlp_ratio: int = 4, dropout: float = 0.0, emb_dropout: float = 0.0,
                 backend: str = "auto"):
        super().__init__()
        positive_int("HDKDStudent", "num_classes", num_classes)
        positive_int("HDKDStudent", "img_size", img_size)
        if img_size % 16:
            raise ValueError(f"HDKDStudent: expected img_size to be a multiple of 16 (the 2 x 2 "
                             f"patches tile the img_size / 8 feature map), got {img_size}")
        self.num_classes, self.img_size, self.in_chans = num_classes, img_size, in_chans
        self.distillation = distillation
        self.stage1, self.stage2, self.stage3 = make_stages(in_chans, depths, widths, backend)
        feat = stage_output_size(img_size)
        self.dflt = DFLT(widths[2], (feat, feat), 2, dim, depth, heads, head_dim, mlp_ratio,
                         distillation, dropout, emb_dropout)
        self.head = nn.Linear(dim, num_classes)
        self.head_dist = nn.Linear(dim, num_classes) if distillation else None

    def forward(self, x: Tensor, return_features: bool = False):
        """See the class doc; with return_features, (output, [stage1, stage2, stage3 outputs])
        from the same single pass."""
        check_input("HDKDStudent", x, self.in_chans, self.img_size)
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        if self.distillation:
            cls_tok, dist_tok = self.dflt(f3)
            cls, dist = self.head(cls_tok), self.head_dist(dist_tok)
            out = (cls, dist) if self.training else (cls + dist) / 2
        else:
            out = self.head(self.dflt(f3))
        return (out, [f1, f2, f3]) if return_features else out
