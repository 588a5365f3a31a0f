"""Registers the three models in timm's registry when timm is installed (timm is optional)."""
from __future__ import annotations

import importlib.util


def register_with_timm() -> bool:
    if importlib.util.find_spec("timm") is None:
        return False
    from . import timm_models  # noqa: F401  (registers on import)
    return True
