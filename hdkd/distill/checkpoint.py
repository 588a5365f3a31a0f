"""hdkd checkpoints: atomic writes, RNG state capture, and strict loading of model weights from
hdkd checkpoints, plain hdkd state_dicts or state_dicts saved by the original HDKD code."""
from __future__ import annotations

import errno
import io
import json
import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import nn

from ..models import (CheckpointMismatchError, check_state_dict, create_model,
                      from_original_state_dict, list_models)
from ..models.pretrained import is_pretrained_folder, load_pretrained

FORMAT = "hdkd-checkpoint"
VERSION = 1
# Key prefixes that only the original code's layout uses.
_ORIGINAL_MARKERS = ("DFLT_module.", "fn1.", "head_cls.")


# a full disk, a full quota, a file-size limit
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class NoSpaceError(OSError):
    """A checkpoint or log did not fit on its disk; the previous file is intact."""


def _replace_atomically(path: str | os.PathLike, data: bytes) -> None:
    """data into a temporary file in the same folder, fsync, then os.replace: a crash leaves
    either the old file or the new one, never a truncated one; a full disk leaves the old one
    and no temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            free = shutil.disk_usage(path.parent).free
            kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
            raise NoSpaceError(e.errno, f"not enough space to write {str(path)!r}: it needs "
                                        f"{len(data) / 1e6:.1f} MB and {free / 1e6:.1f} MB are free "
                                        f"({os.strerror(e.errno)}); {kept}") from None
        raise


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save, atomically (serialised in memory first, so its size is known)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    _replace_atomically(path, buf.getvalue())


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    _replace_atomically(path, text.encode("utf-8"))


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> None:
    _replace_atomically(path, data)


def write_json_atomic(data: Any, path: str | os.PathLike) -> None:
    """data as indented JSON, numpy arrays and numbers as JSON lists and numbers."""
    write_text_atomic(json.dumps(data, indent=2, default=_json_value), path)


def _json_value(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_checkpoint(path: str | os.PathLike) -> Any:
    """torch.load(weights_only=True) with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which would run the file's code
        raise ValueError(f"{str(path)!r} is not a checkpoint hdkd can read: not written by "
                         f"torch.save, or it holds objects other than tensors and plain values "
                         f"(hdkd never unpickles code)") from None
    except Exception as e:  # noqa: BLE001  (torch raises many types for a bad file)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {type(e).__name__}: "
                         f"{first_line}") from None


def rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states, in a form weights_only loading accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Mapping) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_hdkd_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def make_model_checkpoint(model_name: str, model: nn.Module, classes, **extra) -> dict:
    """A weights-only hdkd checkpoint (what best.pt and `hdkd convert` write)."""
    return {"format": FORMAT, "version": VERSION, "model_name": model_name,
            "model_kwargs": {"num_classes": model.num_classes, "img_size": model.img_size,
                             "in_chans": model.in_chans},
            "classes": list(classes) if classes is not None else None,
            "model": model.state_dict(), **extra}


def load_model(path: str | os.PathLike, model_name: Optional[str] = None, *,
               what: str = "checkpoint", **create_kwargs) -> tuple[nn.Module, dict]:
    """Build a model and load the weights of `path` into it, strictly.

    Accepts an hdkd checkpoint (best.pt, last.pt, `hdkd convert` output), a save_pretrained
    folder, a plain hdkd state_dict, or a state_dict of the original HDKD code (optionally under
    "model"). model_name is required
    for plain state_dicts and must match an hdkd checkpoint's own. create_kwargs (num_classes,
    img_size, backend, ...) override what the checkpoint says; a checkpoint that does not fit them
    raises CheckpointMismatchError naming every bad key. Returns (model, metadata) where metadata
    has "model_name", "classes" (None when unknown), "layout" ("hdkd", "pretrained" or "original"),
    "config"
    and "temperature" (the fitted temperature scaling; 1.0 when there is none).
    """
    if is_pretrained_folder(path):
        return _load_pretrained_folder(path, model_name, what, create_kwargs)
    if str(path) in list_models() and not Path(path).exists():
        raise FileNotFoundError(f"{what} {str(path)!r} is a model name, not a trained model: "
                                f"give a checkpoint (hdkd train writes OUT/best.pt) or a "
                                f"save_pretrained folder")
    obj = read_checkpoint(path)
    label = f"{what} {str(path)!r}"
    if is_hdkd_checkpoint(obj):
        saved = obj["model_name"]
        if model_name is not None and saved != model_name:
            raise ValueError(f"{label} holds a {saved!r} model, expected {model_name!r}")
        kwargs = {**obj.get("model_kwargs", {}), **create_kwargs}
        model = create_model(saved, **kwargs)
        check_state_dict(model.state_dict(), obj["model"], label)
        model.load_state_dict(obj["model"], strict=True)
        return model, {"model_name": saved, "classes": obj.get("classes"), "layout": "hdkd",
                       "config": obj.get("config"),
                       "temperature": float(obj.get("temperature", 1.0))}
    if not isinstance(obj, Mapping):
        raise ValueError(f"{label} is not a state_dict or an hdkd checkpoint "
                         f"(found a {type(obj).__name__})")
    sd = obj["model"] if isinstance(obj.get("model"), Mapping) else obj
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{label} is not a state_dict: some entries are not tensors")
    if model_name is None:
        raise ValueError(f"{label} is a plain state_dict; say which model it holds "
                         f"(hdkd_teacher, hdkd_student or hdkd)")
    if any(k.startswith(_ORIGINAL_MARKERS) for k in sd) or any(".conv.fn." in k for k in sd):
        try:
            model = from_original_state_dict(model_name, sd, **create_kwargs)
        except CheckpointMismatchError as e:
            raise CheckpointMismatchError(f"{label} (original layout): {e}") from None
        layout = "original"
    else:
        model = create_model(model_name, **create_kwargs)
        check_state_dict(model.state_dict(), sd, label)
        model.load_state_dict(sd, strict=True)
        layout = "hdkd"
    return model, {"model_name": model_name, "classes": None, "layout": layout, "config": None,
                   "temperature": 1.0}


def _load_pretrained_folder(path, model_name, what, create_kwargs) -> tuple[nn.Module, dict]:
    """load_model of a save_pretrained folder: its sizes are fixed by its weights."""
    model, config = load_pretrained(path, backend=create_kwargs.pop("backend", "auto"))
    if model_name is not None and config["model"] != model_name:
        raise ValueError(f"{what} {str(path)!r} holds a {config['model']!r} model, expected "
                         f"{model_name!r}")
    for key, value in create_kwargs.items():
        if getattr(model, key, value) != value:
            raise ValueError(f"{what} {str(path)!r} has {key}={getattr(model, key)}, not {value}")
    return model.train(), {"model_name": config["model"], "classes": config.get("classes"),
                           "layout": "pretrained", "config": None,
                           "temperature": float(config.get("temperature", 1.0))}
