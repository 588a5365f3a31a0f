"""create_model / list_models for the three HDKD models."""
from __future__ import annotations

from typing import Callable

from torch import nn

from .student import HDKDStudent
from .teacher import HDKDTeacher

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "hdkd_teacher": HDKDTeacher,
    "hdkd_student": lambda **kw: HDKDStudent(distillation=False, **kw),
    "hdkd": lambda **kw: HDKDStudent(distillation=True, **kw),
}

DESCRIPTIONS = {
    "hdkd_teacher": "CNN teacher (stem + 6 + 9 MBCSA blocks)",
    "hdkd_student": "hybrid student trained without distillation (class token only)",
    "hdkd": "hybrid student with class and distillation tokens (the HDKD model)",
}


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 7, img_size: int = 224, **kwargs) -> nn.Module:
    """Build "hdkd_teacher", "hdkd_student" or "hdkd"; kwargs go to HDKDTeacher / HDKDStudent
    (in_chans, backend, dropout, ...)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(list_models())}")
    return _MODELS[name](num_classes=num_classes, img_size=img_size, **kwargs)
