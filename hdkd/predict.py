"""Class probabilities of a trained model for image files: the images are prepared as for
evaluation (resize, 3 channels, ImageNet normalisation), optionally averaged over flips (test-time
augmentation), and divided by the checkpoint's calibration temperature before the softmax."""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch
from torch import nn

from .data.folders import IMAGE_EXTENSIONS, ImageReadError, images_under, read_image
from .data.transforms import finish


@dataclass
class Prediction:
    path: str
    probabilities: list[float]  # one per class, in the model's class order


@dataclass
class PredictionRun:
    predictions: list[Prediction] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def find_images(inputs: Sequence[str]) -> list[str]:
    """The image files named by `inputs`: files as given (whatever their extension), folders
    searched recursively for image extensions (hidden entries skipped), in sorted order. A path
    that does not exist, or a folder without images, is an error naming it."""
    found: list[str] = []
    for item in inputs:
        if os.path.isfile(item):
            found.append(item)
        elif os.path.isdir(item):
            under = images_under(item)
            if not under:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under folder "
                                        f"{item!r}")
            found += under
        else:
            raise FileNotFoundError(f"input {item!r} does not exist")
    return found


def _views(x: torch.Tensor, tta: bool) -> list[torch.Tensor]:
    """The batch, and with tta its horizontal, vertical and double flips (the symmetries of most
    medical images: lesions, slides and scans have no canonical left-right)."""
    if not tta:
        return [x]
    return [x, x.flip(-1), x.flip(-2), x.flip(-2, -1)]


@torch.inference_mode()
def predict_files(model: nn.Module, paths: Iterable[str], *, batch_size: int = 32,
                  tta: bool = False, temperature: float = 1.0,
                  device: Optional[torch.device] = None,
                  progress: Optional[Callable[[int], object]] = None) -> Iterator[tuple[str, object]]:
    """(path, probabilities as a list of floats) for each path, or (path, ImageReadError) for a
    file that cannot be read; the model runs in eval mode on batches of `batch_size` images.
    progress(n) is called after each n files."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    model.eval()
    device = device or next(model.parameters()).device
    pending: list[tuple[str, torch.Tensor]] = []

    def run() -> Iterator[tuple[str, object]]:
        views = _views(torch.stack([image for _, image in pending]).to(device), tta)
        probs = sum(torch.softmax(model(v).float() / temperature, dim=1) for v in views)
        probs = (probs / len(views)).cpu().tolist()
        yield from ((path, p) for (path, _), p in zip(pending, probs))
        if progress:
            progress(len(pending))
        pending.clear()

    for path in paths:
        try:
            image = finish(read_image(path), model.img_size)
        except (ImageReadError, ValueError) as e:  # ValueError: a channel count it cannot use
            yield path, e if isinstance(e, ImageReadError) else ImageReadError(f"{path}: {e}")
            if progress:
                progress(1)
            continue
        pending.append((path, image))
        if len(pending) == batch_size:
            yield from run()
    if pending:
        yield from run()


def format_predictions(run: PredictionRun, classes: Sequence[str], fmt: str,
                       top_k: Optional[int] = None) -> str:
    """CSV or JSON text, one row (object) per readable image: path, predicted class, its
    probability, then every class's probability, or with top_k the k most probable classes."""
    if fmt not in ("csv", "json"):
        raise ValueError(f"output format must be csv or json, got {fmt!r}")
    if top_k is not None and not 1 <= top_k <= len(classes):
        raise ValueError(f"top_k must be between 1 and {len(classes)} (the number of classes), "
                         f"got {top_k}")
    rows = []
    for p in run.predictions:
        order = sorted(range(len(classes)), key=lambda i: -p.probabilities[i])
        row = {"path": p.path, "predicted": classes[order[0]],
               "probability": p.probabilities[order[0]]}
        if top_k is None:
            row["probabilities"] = {c: q for c, q in zip(classes, p.probabilities)}
        else:
            row["top_k"] = [{"class": classes[i], "probability": p.probabilities[i]}
                            for i in order[:top_k]]
        rows.append(row)
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if top_k is None:
        writer.writerow(["path", "predicted", "probability", *(f"p_{c}" for c in classes)])
        for r in rows:
            writer.writerow([r["path"], r["predicted"], f"{r['probability']:.6f}",
                             *(f"{q:.6f}" for q in r["probabilities"].values())])
    else:
        head = [f"{what}{k}" for k in range(1, top_k + 1) for what in ("class_", "p_")]
        writer.writerow(["path", "predicted", "probability", *head])
        for r in rows:
            cells = [v for t in r["top_k"] for v in (t["class"], f"{t['probability']:.6f}")]
            writer.writerow([r["path"], r["predicted"], f"{r['probability']:.6f}", *cells])
    return buf.getvalue()
