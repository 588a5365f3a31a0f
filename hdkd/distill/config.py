"""TrainConfig: every setting of a training run, with the original HDKD recipe as defaults."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Optional

from ..models import list_models

AMP_MODES = ("none", "bf16", "fp16")
KD_KINDS = ("soft", "hard")
SELECT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "val_loss")
OPTIMIZERS = ("adam", "adamw")

# The original recipe per model (docs/model.md, section 13).
RECIPES = {
    "hdkd_teacher": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant",
                         warmup_epochs=0),
    "hdkd_student": dict(optimizer="adamw", lr=5e-5, weight_decay=0.05, schedule="cosine",
                         warmup_epochs=5),
    "hdkd": dict(optimizer="adamw", lr=5e-5, weight_decay=0.05, schedule="cosine",
                 warmup_epochs=5),
}


@dataclass
class TrainConfig:
    """Fields left None take the recipe's value for the model (see RECIPES)."""

    model: str = "hdkd"
    data: str = "digits"
    out: str = "runs/hdkd"
    teacher: Optional[str] = None
    epochs: int = 200
    img_size: int = 224
    batch_size: int = 16
    optimizer: Optional[str] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    schedule: Optional[str] = None
    warmup_epochs: Optional[int] = None
    warmup_lr: float = 2e-5
    min_lr: float = 2e-5
    distillation: str = "soft"
    alpha: float = 0.5
    tau: float = 1.0
    feature_weight: float = 10.0
    beta: float = 1.0
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    clip_grad: Optional[float] = None
    ema_decay: Optional[float] = None
    select_metric: str = "accuracy"
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    backend: str = "auto"
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    smote: bool = False
    smote_targets: Optional[str] = None  # JSON file, class name -> training images wanted
    folds: Optional[int] = None  # cross-validation: fold `fold` (0-based) of `folds` is the test
    fold: Optional[int] = None
    groups: Optional[str] = None  # CSV file, image -> patient/lesion id: whole groups per split
    augment: bool = True
    balanced_sampler: bool = False
    sync_bn: bool = False
    progress: Optional[bool] = None
    plots: bool = True
    calibrate: bool = False  # fit temperature scaling on the val split into best.pt
    classes: Optional[list[str]] = None  # names for the data's classes, in their order

    def resolved(self) -> "TrainConfig":
        """A copy with the recipe filled in, validated; raises ValueError naming the bad field."""
        if self.model not in list_models():
            raise ValueError(f"unknown model {self.model!r}; expected one of: "
                             f"{', '.join(list_models())}")
        recipe = RECIPES[self.model]
        cfg = replace(self, **{k: v for k, v in recipe.items() if getattr(self, k) is None})
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        def bad(name, expected):
            raise ValueError(f"{name}: expected {expected}, got {getattr(self, name)!r}")

        for name in ("epochs", "img_size", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "a positive integer")
        if self.warmup_epochs < 0:
            bad("warmup_epochs", "an integer >= 0")
        if self.workers < 0:
            bad("workers", "an integer >= 0")
        for name in ("lr", "warmup_lr", "min_lr", "weight_decay", "tau", "feature_weight"):
            if not getattr(self, name) >= 0:
                bad(name, "a number >= 0")
        if not 0 <= self.alpha <= 1:
            bad("alpha", "a number in [0, 1]")
        if self.clip_grad is not None and not self.clip_grad > 0:
            bad("clip_grad", "a positive number (or None for no clipping)")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            bad("ema_decay", "a number in (0, 1) (or None for no EMA)")
        choices = dict(amp=AMP_MODES, distillation=KD_KINDS, select_metric=SELECT_METRICS,
                       optimizer=OPTIMIZERS, schedule=("constant", "cosine"))
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                bad(name, "one of " + ", ".join(allowed))
        from ..data.folds import check_folds

        check_folds(self.folds, self.fold)
        if self.model == "hdkd" and not self.teacher:
            raise ValueError("teacher: --model hdkd distils from a teacher; pass --teacher CKPT "
                             "(a trained hdkd_teacher checkpoint or an original-layout state_dict)")
        if self.model != "hdkd" and self.teacher:
            raise ValueError(f"teacher: only --model hdkd uses a teacher; {self.model} trains "
                             f"from the labels alone, so drop --teacher")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
