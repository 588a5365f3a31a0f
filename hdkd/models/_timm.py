"""Registers the three models in timm's registry when timm is installed."""
from __future__ import annotations

import importlib.util


def register_with_timm() -> bool:
    if importlib.util.find_spec("timm") is None:
        return False
    from timm.models import register_model

    from .registry import create_model

    def entry(name):
        def build(pretrained: bool = False, **kwargs):
            if pretrained:
                raise ValueError(f"{name}: hdkd ships no pretrained weights; load a checkpoint with "
                                 f"hdkd.models.from_original_state_dict or load_state_dict")
            for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
                kwargs.pop(k, None)
            return create_model(name, **kwargs)

        build.__name__ = name
        build.__qualname__ = name
        return build

    for name in ("hdkd_teacher", "hdkd_student", "hdkd"):
        register_model(entry(name))
    return True
