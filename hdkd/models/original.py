"""Checkpoints of the original HDKD code: its state_dict layout <-> hdkd's module names.

The layout is in docs/model.md, section 12. Conversion is strict both ways: a key that
is missing, unexpected or of the wrong shape is reported, all of them in one error, and nothing is
loaded unless everything matches.
"""
from __future__ import annotations

import math
import re
from typing import Mapping, Optional

import torch
from torch import nn

from ..nn import MBCSA
from .registry import create_model

# hdkd module -> the original code's module; parameters and buffers keep their names, except
# the DFLT's own parameters, which _PARAMETERS renames.
_MODULES = {
    # teacher head
    "fc": "fn1",
    "classifier": "classifier",
    # student: DFLT and heads
    "dflt.patch_norm": "DFLT_module.to_patch_embedding.1",
    "dflt.patch_proj": "DFLT_module.to_patch_embedding.2",
    "dflt.embed_norm": "DFLT_module.to_patch_embedding.3",
    "dflt.norm": "DFLT_module.transformer.norm",
    "head": "head_cls",
    "head_dist": "head_distill",
}
_PARAMETERS = {
    "dflt.cls_token": "DFLT_module.cls_token",
    "dflt.dist_token": "DFLT_module.distill_token",
    "dflt.pos_embed": "DFLT_module.pos_embedding",
}
# The modules of one block, named after the block's own prefix (which keeps its index).
_CONV_BLOCK = {"conv": "0", "norm": "1"}
_MBCSA_BLOCK = {
    "pre_norm": "conv.norm",
    "expand": "conv.fn.0",
    "expand_norm": "conv.fn.1",
    "dw": "conv.fn.3",
    "dw_norm": "conv.fn.4",
    "attention.channel_attention.fc1": "conv.fn.6.channel_attention.fc.0",
    "attention.channel_attention.fc2": "conv.fn.6.channel_attention.fc.2",
    "attention.spatial_attention.conv": "conv.fn.6.spatial_attention.conv1",
    "project": "conv.fn.7",
    "project_norm": "conv.fn.8",
    "shortcut": "proj",
}
# Expansion-1 MBCSA blocks have no expand conv: the original's Sequential shifts.
_MBCSA_BLOCK_EXPANSION_1 = {**_MBCSA_BLOCK, "dw": "conv.fn.0", "dw_norm": "conv.fn.1",
                            "project": "conv.fn.3", "project_norm": "conv.fn.4"}
_TRANSFORMER_LAYER = {
    "attn.norm": "0.norm",
    "attn.qkv": "0.to_qkv",
    "attn.proj": "0.to_out.0",
    "ff.fc1": "1.net.0",
    "ff.fc2": "1.net.3",
}
# hdkd's sequence of blocks -> (the original's, the modules of one block)
_BLOCKS = {
    "stage1": ("stage1", _CONV_BLOCK),
    "stage2": ("stage2", _MBCSA_BLOCK),
    "stage3": ("stage3", _MBCSA_BLOCK),
    "dflt.layers": ("DFLT_module.transformer.layers", _TRANSFORMER_LAYER),
}
# a module inside a block: (sequence of blocks, block index, the module's name in the block)
_IN_BLOCK = re.compile(r"(stage[123]|dflt\.layers)\.(\d+)\.(.+)")


class CheckpointMismatchError(ValueError):
    """The state_dict does not match the model; the message lists every offending key."""


def _original_module(module: str, expansion_1: bool) -> Optional[str]:
    in_block = _IN_BLOCK.fullmatch(module)
    if in_block is None:
        return _MODULES.get(module)
    blocks, index, part = in_block.groups()
    original_blocks, parts = _BLOCKS[blocks]
    if expansion_1:  # set for the modules of an MBCSA block without expand conv
        parts = _MBCSA_BLOCK_EXPANSION_1
    original_part = parts.get(part)
    return None if original_part is None else f"{original_blocks}.{index}.{original_part}"


def _original_key(key: str, expansion_1: bool) -> str:
    if key in _PARAMETERS:
        return _PARAMETERS[key]
    module, _, name = key.rpartition(".")
    original = _original_module(module, expansion_1)
    if original is None:
        raise KeyError(f"no original-layout name for hdkd parameter {key!r}")
    return f"{original}.{name}"


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
