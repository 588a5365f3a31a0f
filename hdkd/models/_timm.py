"""Registers the three models in timm's registry when timm is installed (timm is optional)."""
from __future__ import annotations


def register_with_timm() -> bool:
    """True when timm is importable and the models are registered."""
    try:
        import timm  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name != "timm":
            raise
        return False
    from . import timm_models  # noqa: F401  (registers on import)
    return True
