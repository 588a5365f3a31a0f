"""Exporting a model for deployment, as ONNX (for ONNX Runtime and other ONNX engines) or as a
torch.export program (.pt2), each checked against the model it came from before it is kept.

An exported file holds hdkd's reference composition, standard operators only: while exporting,
backend "auto" runs the reference (hdkd.ops.backends.resolve), so neither format needs hdkd, its
extension or Triton where it runs. docs/deployment.md says why.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

FORMATS = ("onnx", "pt2")
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2"}
PACKAGES = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "pt2": ()}  # the "deploy" extra
ONNX_OPSET = 18
TOLERANCE = 1e-4  # float32 max abs difference the check allows


class ExportCheckError(RuntimeError):
    """The exported file does not compute what the model computes (nothing is kept)."""


@dataclass
class ExportReport:
    path: Path
    format: str
    batch: Optional[int]  # None: any batch size
    checked_batches: tuple[int, ...]
    max_abs_diff: float


class TemperatureScaled(nn.Module):
    """model(x) / temperature: the calibrated logits of a checkpoint fitted with --calibrate, so
    that a softmax of the exported output gives the calibrated probabilities."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.model, self.temperature = model, float(temperature)
        self.img_size, self.in_chans = model.img_size, model.in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def missing_packages(format: str) -> list[str]:
    """The packages `format` needs that are not installed."""
    return [name for name in PACKAGES[format] if importlib.util.find_spec(name) is None]


def export_model(model: nn.Module, path: str | os.PathLike, format: str,
                 batch: Optional[int] = None, tolerance: float = TOLERANCE) -> ExportReport:
    """Export `model` (an hdkd model: it has img_size and in_chans) in eval mode to `path` and
    check the file against the model on random images: at batch sizes 1 and 3 for a dynamic batch
    (batch=None), else at `batch`. The file appears only once it passed; ExportCheckError says by
    how much it missed."""
    if format not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, got {format!r}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive int or None (dynamic), got {batch!r}")
    for attr in ("img_size", "in_chans"):
        if not hasattr(model, attr):
            raise TypeError(f"export_model expects an hdkd model; {type(model).__name__} has no "
                            f"{attr!r}")
    missing = missing_packages(format)
    if missing:
        raise ImportError(f"exporting to {format} needs {', '.join(missing)} "
                          f"(pip install 'hdkd[deploy]')")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"export path {str(path)!r} is a directory")
    model = model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:
        size = (n, model.in_chans, model.img_size, model.img_size)
        return torch.randn(size, generator=g).to(device)

    checked = (1, 3) if batch is None else (batch,)
    # torch.export.save/load want the .pt2 suffix
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{SUFFIXES[format]}")
    try:
        example = images(checked[-1])
        if format == "onnx":
            run = _export_onnx(model, example, tmp, dynamic=batch is None)
        else:
            run = _export_pt2(model, example, tmp, dynamic=batch is None)
        diff = 0.0
        with torch.no_grad():
            for n in checked:
                x = images(n)
                expected = model(x).float().cpu()
                got = run(x)
                if got.shape != expected.shape:
                    raise ExportCheckError(f"the exported {format} program returned shape "
                                           f"{tuple(got.shape)} for a batch of {n}, the model "
                                           f"{tuple(expected.shape)}")
                diff = max(diff, (got - expected).abs().max().item())
        if not diff <= tolerance:
            raise ExportCheckError(f"the exported {format} program differs from the model by "
                                   f"{diff:.3g} (max abs, allowed {tolerance:g}); nothing written")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(path, format, batch, checked, diff)


def _dynamic_batch(dynamic: bool):
    return ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, dynamic: bool):
    import onnxruntime as ort

    with torch.no_grad():
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=ONNX_OPSET,
                                    dynamic_shapes=_dynamic_batch(dynamic),
                                    input_names=["images"], output_names=["logits"],
                                    verbose=False)
    program.save(str(path), external_data=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.cpu().numpy()})[0])


def _export_pt2(model: nn.Module, example: torch.Tensor, path: Path, dynamic: bool):
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch(dynamic))
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    return lambda x: loaded(x).float().cpu()
