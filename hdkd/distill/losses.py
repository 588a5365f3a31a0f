"""The HDKD training loss: logit distillation (DeiT style) plus stage-wise feature distillation.

Every input comes from ONE student pass and ONE teacher pass (forward_with_features); the values
equal the original's, which re-ran partial forwards once per distilled stage (docs/model.md,
section 11).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = ("soft", "hard", "none")


class HDKDLoss(nn.Module):
    """L = (1 - alpha) * base + alpha * kd  +  feature_weight * sum_i MSE(s_i, t_i) * (i + 1)^beta.

    base = CE(class logits, labels); kd = soft KL at temperature tau (sum * tau^2 / numel) or hard CE
    against the teacher's argmax. kind="none" trains without logit distillation: the logit loss
    is then just base. Teacher inputs are detached, so gradients reach the student only.

    After each call, `last_parts` holds floats {"base", "kd", "logit", "feature", "total"}
    ("logit" is L_lkd, "feature" the unweighted L_fkd).
    """

    def __init__(self, alpha: float = 0.5, tau: float = 1.0, kind: str = "soft",
                 feature_weight: float = 10.0, beta: float = 1.0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"HDKDLoss: expected kind to be one of {KINDS}, got {kind!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"HDKDLoss: expected alpha in [0, 1], got {alpha}")
        if not tau > 0:
            raise ValueError(f"HDKDLoss: expected tau > 0, got {tau}")
        if feature_weight < 0:
            raise ValueError(f"HDKDLoss: expected feature_weight >= 0, got {feature_weight}")
        self.alpha, self.tau, self.kind = float(alpha), float(tau), kind
        self.feature_weight, self.beta = float(feature_weight), float(beta)
        self.last_parts: dict[str, float] = {}

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, tau={self.tau}, kind={self.kind!r}, "
                f"feature_weight={self.feature_weight}, beta={self.beta}")

    def forward(self, student_outputs, student_features: Sequence[Tensor] | None,
                teacher_logits: Tensor | None, teacher_features: Sequence[Tensor] | None,
                labels: Tensor) -> Tensor:
        cls_logits, dist_logits = self._split_outputs(student_outputs)
        base = F.cross_entropy(cls_logits.float(), labels)
        if self.kind == "none":
            kd = base.new_zeros(())
            logit = base
        else:
            if teacher_logits is None:
                raise ValueError(f"HDKDLoss: kind={self.kind!r} needs teacher_logits, got None")
            kd = self._logit_kd(dist_logits.float(), teacher_logits.detach().float())
            logit = (1.0 - self.alpha) * base + self.alpha * kd
        feature = self._feature_kd(student_features, teacher_features, base)
        total = logit + self.feature_weight * feature
        values = torch.stack([base, kd, logit, feature, total]).detach().tolist()  # one sync
        self.last_parts = dict(zip(("base", "kd", "logit", "feature", "total"), values))
        return total

    def _split_outputs(self, outputs) -> tuple[Tensor, Tensor | None]:
        if isinstance(outputs, Tensor):
            if self.kind != "none":
                raise ValueError(
                    f"HDKDLoss: kind={self.kind!r} needs student_outputs = (class_logits, "
                    f"distillation_logits) from the 'hdkd' model in training mode, got one "
                    f"logits tensor; use kind='none' for models without a distillation head")
            return outputs, None
        if isinstance(outputs, (tuple, list)) and len(outputs) == 2:
            return outputs[0], outputs[1]
        raise TypeError(f"HDKDLoss: expected student_outputs to be a logits tensor or a "
                        f"(class_logits, distillation_logits) pair, got {type(outputs).__name__}")

    def _logit_kd(self, dist: Tensor, teacher: Tensor) -> Tensor:
        if dist.shape != teacher.shape:
            raise ValueError(f"HDKDLoss: distillation logits {tuple(dist.shape)} and teacher "
                             f"logits {tuple(teacher.shape)} must have the same shape")
        if self.kind == "hard":
            return F.cross_entropy(dist, teacher.argmax(dim=1))
        t = self.tau
        kl = F.kl_div(F.log_softmax(dist / t, dim=1), F.log_softmax(teacher / t, dim=1),
                      reduction="sum", log_target=True)
        return kl * (t * t) / dist.numel()

    def _feature_kd(self, student: Sequence[Tensor] | None, teacher: Sequence[Tensor] | None,
                    like: Tensor) -> Tensor:
        if teacher is not None and student is None:
            raise ValueError("HDKDLoss: teacher_features were given without student_features; "
                             "pass both (from forward_with_features) or neither")
        if student is None or teacher is None:
            return like.new_zeros(())
        if len(student) != len(teacher):
            raise ValueError(f"HDKDLoss: expected as many student as teacher features, got "
                             f"{len(student)} student and {len(teacher)} teacher stages")
        total = like.new_zeros(())
        for i, (s, t) in enumerate(zip(student, teacher)):
            if s.shape != t.shape:
                raise ValueError(f"HDKDLoss: stage {i + 1} features differ in shape: student "
                                 f"{tuple(s.shape)}, teacher {tuple(t.shape)}")
            total = total + F.mse_loss(s.float(), t.detach().float()) * (i + 1) ** self.beta
        return total
