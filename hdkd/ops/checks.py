"""Argument checks shared by the public ops: each failure is a ValueError (or TypeError for a
dtype) naming the op, the argument, what was expected and what was given."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_activation(op: str, name: str, x: Tensor, channels: Optional[int] = None) -> None:
    """x must be a floating B x C x H x W tensor, with C == channels when given."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: expected {name} to be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        want = f"B x {channels} x H x W" if channels is not None else "B x C x H x W"
        raise ValueError(f"{op}: expected {name} to be 4-D ({want}), got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{op}: expected {name} with {channels} channels (B x {channels} x H x W), "
                         f"got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: expected {name} of a floating dtype "
                        f"(float32, float16, bfloat16, float64), got {x.dtype}")
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{op}: expected {name} with a non-empty batch and spatial size, "
                         f"got shape {tuple(x.shape)}")


def check_shape(op: str, name: str, t: Tensor, shape: tuple) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: expected {name} of shape {tuple(shape)}, got {tuple(t.shape)}")


def check_same_device_dtype(op: str, x: Tensor, named: Iterable[tuple[str, Optional[Tensor]]],
                            check_dtype: bool = True) -> None:
    """Every tensor in `named` must live on x's device and, unless autocast is on for that
    device, have x's dtype."""
    autocast = torch.is_autocast_enabled(x.device.type) if x.device.type in ("cpu", "cuda") else False
    for name, t in named:
        if t is None:
            continue
        if t.device != x.device:
            raise ValueError(f"{op}: expected {name} on {x.device} (the input's device), "
                             f"got {t.device}")
        if check_dtype and not autocast and t.dtype != x.dtype:
            raise TypeError(f"{op}: expected {name} of dtype {x.dtype} (the input's dtype), got "
                            f"{t.dtype}; cast the module (.to(dtype)) or use torch.autocast")
