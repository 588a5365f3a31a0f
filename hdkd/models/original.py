"""Checkpoints of the original HDKD code: its state_dict layout <-> hdkd's module names.

The layout is in docs/model.md, section 12. Conversion is strict both ways: a key that
is missing, unexpected or of the wrong shape is reported, all of them in one error, and nothing is
loaded unless everything matches.
"""
from __future__ import annotations

import math
import re
from typing import Mapping

import torch
from torch import nn

from ..nn import MBCSA
from .registry import create_model

# (hdkd key pattern, original key template); the first match wins. {s}, {j}, {i}: indices.
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_RULES = [
    (rf"stage1\.(\d+)\.conv\.weight", r"stage1.\1.0.weight"),
    (rf"stage1\.(\d+)\.norm\.{_BN}", r"stage1.\1.1.\2"),
    # MBCSA, expansion > 1
    (rf"stage([23])\.(\d+)\.pre_norm\.{_BN}", r"stage\1.\2.conv.norm.\3"),
    (r"stage([23])\.(\d+)\.expand\.weight", r"stage\1.\2.conv.fn.0.weight"),
    (rf"stage([23])\.(\d+)\.expand_norm\.{_BN}", r"stage\1.\2.conv.fn.1.\3"),
    (r"stage([23])\.(\d+)\.dw\.weight", r"stage\1.\2.conv.fn.3.weight"),
    (rf"stage([23])\.(\d+)\.dw_norm\.{_BN}", r"stage\1.\2.conv.fn.4.\3"),
    (r"stage([23])\.(\d+)\.attention\.channel_attention\.fc1\.weight",
     r"stage\1.\2.conv.fn.6.channel_attention.fc.0.weight"),
    (r"stage([23])\.(\d+)\.attention\.channel_attention\.fc2\.weight",
     r"stage\1.\2.conv.fn.6.channel_attention.fc.2.weight"),
    (r"stage([23])\.(\d+)\.attention\.spatial_attention\.conv\.weight",
     r"stage\1.\2.conv.fn.6.spatial_attention.conv1.weight"),
    (r"stage([23])\.(\d+)\.project\.weight", r"stage\1.\2.conv.fn.7.weight"),
    (rf"stage([23])\.(\d+)\.project_norm\.{_BN}", r"stage\1.\2.conv.fn.8.\3"),
    (r"stage([23])\.(\d+)\.shortcut\.weight", r"stage\1.\2.proj.weight"),
    # teacher head
    (r"fc\.(weight|bias)", r"fn1.\1"),
    (r"classifier\.(weight|bias)", r"classifier.\1"),
    # student: DFLT and heads
    (r"dflt\.cls_token", r"DFLT_module.cls_token"),
    (r"dflt\.dist_token", r"DFLT_module.distill_token"),
    (r"dflt\.pos_embed", r"DFLT_module.pos_embedding"),
    (r"dflt\.patch_norm\.(weight|bias)", r"DFLT_module.to_patch_embedding.1.\1"),
    (r"dflt\.patch_proj\.(weight|bias)", r"DFLT_module.to_patch_embedding.2.\1"),
    (r"dflt\.embed_norm\.(weight|bias)", r"DFLT_module.to_patch_embedding.3.\1"),
    (r"dflt\.layers\.(\d+)\.attn\.norm\.(weight|bias)",
     r"DFLT_module.transformer.layers.\1.0.norm.\2"),
    (r"dflt\.layers\.(\d+)\.attn\.qkv\.weight", r"DFLT_module.transformer.layers.\1.0.to_qkv.weight"),
    (r"dflt\.layers\.(\d+)\.attn\.proj\.(weight|bias)",
     r"DFLT_module.transformer.layers.\1.0.to_out.0.\2"),
    (r"dflt\.layers\.(\d+)\.ff\.fc1\.(weight|bias)", r"DFLT_module.transformer.layers.\1.1.net.0.\2"),
    (r"dflt\.layers\.(\d+)\.ff\.fc2\.(weight|bias)", r"DFLT_module.transformer.layers.\1.1.net.3.\2"),
    (r"dflt\.norm\.(weight|bias)", r"DFLT_module.transformer.norm.\1"),
    (r"head\.(weight|bias)", r"head_cls.\1"),
    (r"head_dist\.(weight|bias)", r"head_distill.\1"),
]
# Expansion-1 MBCSA blocks have no expand conv: the original's Sequential shifts.
_RULES_EXPANSION_1 = [
    (r"stage([23])\.(\d+)\.dw\.weight", r"stage\1.\2.conv.fn.0.weight"),
    (rf"stage([23])\.(\d+)\.dw_norm\.{_BN}", r"stage\1.\2.conv.fn.1.\3"),
    (r"stage([23])\.(\d+)\.project\.weight", r"stage\1.\2.conv.fn.3.weight"),
    (rf"stage([23])\.(\d+)\.project_norm\.{_BN}", r"stage\1.\2.conv.fn.4.\3"),
]
_COMPILED = [(re.compile(p + r"\Z"), t) for p, t in _RULES]
_COMPILED_E1 = [(re.compile(p + r"\Z"), t) for p, t in _RULES_EXPANSION_1]


class CheckpointMismatchError(ValueError):
    """The state_dict does not match the model; the message lists every offending key."""


def _original_key(key: str, expansion_1: bool) -> str:
    for pattern, template in (_COMPILED_E1 + _COMPILED) if expansion_1 else _COMPILED:
        m = pattern.match(key)
        if m:
            return m.expand(template)
    raise KeyError(f"no original-layout name for hdkd parameter {key!r}")


def _key_map(model: nn.Module, keys=None) -> dict[str, str]:
    """hdkd key -> original key for `keys` (default: every entry of model.state_dict())."""
    e1 = tuple(f"{name}." for name, m in model.named_modules()
               if isinstance(m, MBCSA) and m.expand is None)
    keys = model.state_dict() if keys is None else keys
    return {k: _original_key(k, bool(e1) and k.startswith(e1)) for k in keys}


def to_original_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """model.state_dict() under the original code's key names."""
    mapping = _key_map(model)
    return {mapping[k]: v for k, v in model.state_dict().items()}


def unwrap_state_dict(state_dict: Mapping) -> Mapping:
    """The state_dict of a training checkpoint ({"model": state_dict, ...}: the original's,
    hdkd's); a state_dict itself unchanged."""
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        return state_dict["model"]
    return state_dict


# (teacher classifier, student class head, first conv, position embedding) in each layout
_SHAPE_KEYS = {
    "hdkd": ("classifier.weight", "head.weight", "stage1.0.conv.weight", "dflt.pos_embed"),
    "original": ("classifier.weight", "head_cls.weight", "stage1.0.0.weight",
                 "DFLT_module.pos_embedding"),
}


def saved_model_kwargs(name: str, sd: Mapping, original: bool) -> dict:
    """num_classes, in_chans and img_size of the model that saved `sd` (in the original
    layout or hdkd's), as far as its shapes tell: img_size only for the students, from their
    position embedding."""
    teacher_head, student_head, first_conv, pos_key = _SHAPE_KEYS[
        "original" if original else "hdkd"]
    kwargs = {}
    head = sd.get(teacher_head if name == "hdkd_teacher" else student_head)
    if head is not None:
        kwargs["num_classes"] = head.shape[0]
    if first_conv in sd:
        kwargs["in_chans"] = sd[first_conv].shape[1]
    pos = sd.get(pos_key)
    if pos is not None and name != "hdkd_teacher":
        tokens = pos.shape[1] - (2 if name == "hdkd" else 1)
        side = math.isqrt(max(tokens, 0))
        if side * side == tokens:
            kwargs["img_size"] = 16 * side
    return kwargs


# Key prefixes and parts that only the original code's layout has.
_ORIGINAL_PREFIXES = ("DFLT_module.", "fn1.", "head_cls.")


def is_original_layout(state_dict: Mapping) -> bool:
    return any(k.startswith(_ORIGINAL_PREFIXES) or ".conv.fn." in k for k in state_dict)


def rename_original_keys(state_dict: Mapping, model: nn.Module) -> dict:
    """A state_dict of the original code under hdkd's key names for `model` (the classifier
    heads too when the model has none now); keys without an hdkd name keep theirs, so that
    load_state_dict reports them."""
    heads = [f"{head}.{p}" for head in ("head", "head_dist", "classifier")
             for p in ("weight", "bias")]
    to_hdkd = {orig: k for k, orig in _key_map(model, [*model.state_dict(), *heads]).items()}
    return {to_hdkd.get(k, k): v for k, v in state_dict.items()}


def check_state_dict(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor],
                     what: str) -> None:
    """Raise one CheckpointMismatchError naming every missing, unexpected and mis-shaped key."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    misshaped = sorted(f"{k}: expected {tuple(expected[k].shape)}, got {tuple(given[k].shape)}"
                       for k in set(expected) & set(given)
                       if tuple(expected[k].shape) != tuple(getattr(given[k], "shape", ())))
    if missing or unexpected or misshaped:
        parts = [f"{what} does not match the model:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", misshaped)):
            if keys:
                parts.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
        raise CheckpointMismatchError("\n".join(parts))


def from_original_state_dict(name: str, state_dict: Mapping[str, torch.Tensor],
                             **create_kwargs) -> nn.Module:
    """Build model `name` and load a state_dict saved by the original HDKD code into it.
    num_classes, in_chans and img_size are read from the checkpoint unless given."""
    sd = unwrap_state_dict(state_dict)
    model = create_model(name, **{**saved_model_kwargs(name, sd, original=True), **create_kwargs})
    mapping = _key_map(model)
    expected = {mapping[k]: v for k, v in model.state_dict().items()}
    check_state_dict(expected, sd, f"original {name} checkpoint")
    model.load_state_dict({k: sd[mapping[k]] for k in mapping}, strict=True)
    return model
