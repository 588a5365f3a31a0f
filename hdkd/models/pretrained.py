"""Weights a user can share: a folder with `config.json` (which model, its sizes, class names,
input normalisation, calibration temperature) and `model.safetensors` (the state_dict). Loading
is strict and reads tensors only: safetensors holds no code, so no pickled code runs.

The layout is the Hugging Face Hub's: a folder saved here can be pushed as a model repository
(`huggingface_hub.upload_folder`), and from_pretrained("user/name") pulls one (when
huggingface_hub is installed) before loading it the same way.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Sequence

from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .original import check_state_dict
from .registry import create_model, list_models
from .student import HDKDStudent
from .teacher import HDKDTeacher

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
FORMAT = "hdkd-pretrained"
_REQUIRED = ("format", "model", "num_classes", "img_size", "in_chans", "weights_sha256")


def model_name_of(model: nn.Module) -> str:
    """The registry name that builds `model`'s architecture."""
    if isinstance(model, HDKDTeacher):
        return "hdkd_teacher"
    if isinstance(model, HDKDStudent):
        return "hdkd" if model.distillation else "hdkd_student"
    raise TypeError(f"expected an hdkd model ({', '.join(list_models())}), got "
                    f"{type(model).__name__}")


def is_pretrained_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG).is_file()


def save_pretrained(model: nn.Module, directory: str | os.PathLike, *,
                    classes: Optional[Sequence[str]] = None, temperature: float = 1.0) -> Path:
    """Write `model` to `directory` (created if needed): model.safetensors, then config.json,
    each atomically. config.json records the weights' SHA-256, so a folder whose two files do
    not belong together (an interrupted overwrite) is refused when loaded."""
    from safetensors.torch import save

    from ..distill.checkpoint import write_bytes_atomic, write_text_atomic

    name = model_name_of(model)
    if classes is not None:
        classes = [str(c) for c in classes]
        if len(classes) != model.num_classes:
            raise ValueError(f"save_pretrained: {len(classes)} class names for a model of "
                             f"{model.num_classes} classes")
    if not temperature > 0:
        raise ValueError(f"save_pretrained: temperature must be positive, got {temperature}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = save(state, metadata={"format": "pt"})
    write_bytes_atomic(weights, directory / WEIGHTS)
    config = {"format": FORMAT, "model": name, "num_classes": model.num_classes,
              "img_size": model.img_size, "in_chans": model.in_chans, "classes": classes,
              "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
              "temperature": float(temperature),
              "weights_sha256": hashlib.sha256(weights).hexdigest()}
    write_text_atomic(json.dumps(config, indent=2) + "\n", directory / CONFIG)
    return directory


def read_pretrained_config(directory: str | os.PathLike) -> dict:
    """config.json of a saved folder, checked (missing keys, unknown model) with errors that
    name the file."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist (not a save_pretrained folder)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not an hdkd config (expected \"format\": "
                         f"\"{FORMAT}\")")
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ValueError(f"{str(path)!r} lacks {', '.join(missing)}")
    if config["model"] not in list_models():
        raise ValueError(f"{str(path)!r} names model {config['model']!r}; expected one of "
                         f"{', '.join(list_models())}")
    return config


def from_pretrained(source: str | os.PathLike, *, backend: str = "auto") -> nn.Module:
    """The model saved in folder `source` (save_pretrained), or in the Hub repository `source`
    ("user/name", when it is not a local folder and huggingface_hub is installed), in eval mode.
    Its config (class names, normalisation, temperature): read_pretrained_config(folder)."""
    return load_pretrained(source, backend=backend)[0]


def load_pretrained(source: str | os.PathLike, *, backend: str = "auto") -> tuple[nn.Module, dict]:
    """(model, config) of from_pretrained."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    directory = _local_folder(source)
    config = read_pretrained_config(directory)
    path = directory / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != config["weights_sha256"]:
        raise ValueError(f"{str(path)!r} is not the weights {str(directory / CONFIG)!r} was "
                         f"saved with (SHA-256 differs): the folder was changed or partly "
                         f"overwritten")
    try:
        state = load(data)
    except SafetensorError as e:
        raise ValueError(f"{str(path)!r} is not a valid safetensors file: {e}") from None
    model = create_model(config["model"], num_classes=config["num_classes"],
                         img_size=config["img_size"], in_chans=config["in_chans"],
                         backend=backend)
    check_state_dict(model.state_dict(), state, f"pretrained weights {str(path)!r}")
    model.load_state_dict(state, strict=True)
    return model.eval(), config


def _local_folder(source: str | os.PathLike) -> Path:
    path = Path(source)
    if path.is_dir() or os.path.isabs(str(source)) or str(source).count("/") != 1:
        if not path.is_dir():
            raise FileNotFoundError(f"pretrained folder {str(source)!r} does not exist")
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{str(source)!r} is not a folder here, and huggingface_hub "
                                f"(to pull it from the Hub) is not installed") from None
    return Path(snapshot_download(repo_id=str(source), allow_patterns=[CONFIG, WEIGHTS]))
