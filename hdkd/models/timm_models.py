"""hdkd_teacher, hdkd_student and hdkd as timm models (imported only when timm is installed).

Each has a pretrained cfg (input size, normalisation, classifier names, ...) but no weights to
download: pretrained=True loads a local hdkd checkpoint (best.pt, last.pt, `hdkd convert`
output), a plain hdkd state_dict, or a state_dict of the original HDKD code, given as
pretrained_cfg_overlay=dict(file=PATH) (or state_dict=...). The model is then built with the
checkpoint's num_classes, in_chans and img_size unless they are passed, and timm's loader reads
the weights through checkpoint_filter_fn.

    model = timm.create_model("hdkd", pretrained=True,
                              pretrained_cfg_overlay=dict(file="runs/x/best.pt"))
"""
from __future__ import annotations

from typing import Mapping

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import is_scriptable, register_notrace_function, register_notrace_module
from timm.models import (build_model_with_cfg, generate_default_cfgs, register_model,
                         resolve_pretrained_cfg)
from torch import nn

from ..nn import DFLT, MBCSA, ConvBNGELU
from .original import (is_original_layout, rename_original_keys, saved_model_kwargs,
                       unwrap_state_dict)
from .registry import create_model
from .stages import check_input, stage_output_size

# fx: these run their fused ops with Python-level dispatch and argument checks, so a symbolic
# trace records them as calls instead of tracing through them
for _leaf in (ConvBNGELU, MBCSA, DFLT):
    register_notrace_module(_leaf)
register_notrace_function(check_input)

_IMG_SIZE = 224


def _cfg(classifier) -> dict:
    # hdkd's data pipeline: a plain (antialiased bilinear) resize to img_size, ImageNet mean/std
    pool = stage_output_size(_IMG_SIZE)
    return dict(url="", num_classes=7, input_size=(3, _IMG_SIZE, _IMG_SIZE), pool_size=(pool, pool),
                fixed_input_size=True, crop_pct=1.0, crop_mode="center", interpolation="bilinear",
                mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="stage1.0.conv",
                classifier=classifier, license="mit")


default_cfgs = generate_default_cfgs({
    "hdkd_teacher": _cfg("classifier"),
    "hdkd_student": _cfg("head"),
    "hdkd": _cfg(("head", "head_dist")),
})


def checkpoint_filter_fn(state_dict: Mapping, model: nn.Module) -> Mapping:
    """timm's pretrained_filter_fn: hdkd state_dicts load as they are, the original code's are
    renamed to hdkd's keys (either may come inside a training checkpoint's "model")."""
    state_dict = unwrap_state_dict(state_dict)
    return rename_original_keys(state_dict, model) if is_original_layout(state_dict) else state_dict


def _build(name: str, img_size=_IMG_SIZE, drop_rate: float = 0.0, **kwargs) -> nn.Module:
    """hdkd's create_model with timm's arguments: img_size may be an (H, W) pair (timm passes
    the cfg's input size so), drop_rate is the students' dropout, and timm's scriptable setting
    (create_model(scriptable=True), set_scriptable) builds the TorchScript-compatible blocks."""
    if not isinstance(img_size, int):
        if len(img_size) != 2 or img_size[0] != img_size[1]:
            raise ValueError(f"{name}: expected a square img_size, got {tuple(img_size)}")
        img_size = img_size[0]
    if drop_rate:
        if name == "hdkd_teacher":
            raise ValueError(f"hdkd_teacher has no dropout; got drop_rate={drop_rate}")
        kwargs.setdefault("dropout", drop_rate)
    kwargs.setdefault("scriptable", is_scriptable())
    return create_model(name, img_size=img_size, **kwargs)


def _checkpoint_overlay(name: str, kwargs: dict) -> dict:
    """The pretrained cfg entries that describe the checkpoint to load: its num_classes, input
    size and class names, so that timm builds a model it fits."""
    from ..distill.checkpoint import is_hdkd_checkpoint, read_checkpoint

    cfg = resolve_pretrained_cfg(name, kwargs.get("pretrained_cfg"),
                                 kwargs.get("pretrained_cfg_overlay"))
    if cfg.state_dict is not None:
        saved = cfg.state_dict
    elif cfg.file:
        saved = read_checkpoint(cfg.file)
    elif cfg.url or cfg.hf_hub_id:
        return {}  # timm downloads it; num_classes and img_size as passed
    else:
        raise ValueError(f"{name}: hdkd ships no pretrained weights; pass a checkpoint as "
                         f"pretrained_cfg_overlay=dict(file=PATH) (an hdkd checkpoint or a "
                         f"state_dict of hdkd or of the original HDKD code)")
    labels = None
    if is_hdkd_checkpoint(saved):
        if saved["model_name"] != name:
            where = repr(cfg.file) if cfg.file else "(pretrained_cfg state_dict)"
            raise ValueError(f"{name}: the checkpoint {where} holds a "
                             f"{saved['model_name']!r} model")
        model_kwargs, labels = saved["model_kwargs"], saved.get("classes")
    else:
        sd = unwrap_state_dict(saved)
        model_kwargs = saved_model_kwargs(name, sd, original=is_original_layout(sd))
    overlay = {}
    if "num_classes" in model_kwargs:
        overlay["num_classes"] = model_kwargs["num_classes"]
    img_size = model_kwargs.get("img_size", _IMG_SIZE)
    overlay["input_size"] = (model_kwargs.get("in_chans", 3), img_size, img_size)
    if labels:
        overlay["label_names"] = tuple(labels)
    return overlay


def _create(name: str, pretrained: bool, **kwargs) -> nn.Module:
    if pretrained:
        user_overlay = kwargs.get("pretrained_cfg_overlay") or {}
        kwargs["pretrained_cfg_overlay"] = {**_checkpoint_overlay(name, kwargs), **user_overlay}
    return build_model_with_cfg(_build, name, pretrained, name=name,
                                pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=(0, 1, 2)), **kwargs)


@register_model
def hdkd_teacher(pretrained: bool = False, **kwargs) -> nn.Module:
    """CNN teacher (stem + 6 + 9 MBCSA blocks)."""
    return _create("hdkd_teacher", pretrained, **kwargs)


@register_model
def hdkd_student(pretrained: bool = False, **kwargs) -> nn.Module:
    """Hybrid student trained without distillation (class token only)."""
    return _create("hdkd_student", pretrained, **kwargs)


@register_model
def hdkd(pretrained: bool = False, **kwargs) -> nn.Module:
    """Hybrid student with class and distillation tokens (the HDKD model)."""
    return _create("hdkd", pretrained, **kwargs)
