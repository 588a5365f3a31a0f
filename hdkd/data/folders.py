"""Image folders: `train/` and `test/` (optional `val/`) with one sub-folder per class, or one
folder of class sub-folders. Images are read with Pillow; grayscale stays one channel here."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from .transforms import resize, to_uint8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm",
                    ".pgm", ".pbm")


class ImageReadError(OSError):
    """An image file that Pillow cannot read (corrupt, truncated or not an image)."""


def _pillow():
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError("reading image folders needs Pillow: pip install pillow") from exc
    return Image


def read_image(path: str) -> Tensor:
    """A float C x H x W tensor in [0, 1]: 1 channel for grayscale (8- or 16-bit), else RGB."""
    Image = _pillow()
    try:
        with Image.open(path) as im:
            if im.mode in ("1", "L", "LA"):
                array = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            elif im.mode.startswith("I;16"):
                array = np.asarray(im, dtype=np.float32) / 65535.0
            elif im.mode in ("I", "F"):
                array = np.asarray(im, dtype=np.float32)
                low, high = float(array.min()), float(array.max())
                array = (array - low) / (high - low) if high > low else np.zeros_like(array)
            else:
                array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


def check_image(path: str) -> None:
    """Fail early on files Pillow cannot identify (reads the header only)."""
    Image = _pillow()
    try:
        with Image.open(path):
            pass
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc


def class_folders(root: str) -> list[str]:
    """Sorted names of the non-hidden sub-folders of root."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def images_under(folder: str) -> list[str]:
    """The image files (by extension) under `folder`, recursively, in sorted order; hidden files
    and folders are skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def scan_split(root: str, classes: list[str], require_all: bool) -> tuple[list[str], list[int]]:
    """(paths, labels) of the images in root/<class>/..., each header checked. A class folder
    that is absent or empty is an error when require_all (training data), and so is a folder
    naming a class that is not in `classes`."""
    present = class_folders(root)
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise ValueError(f"load_dataset: {root} has class folders {unknown} that the training "
                         f"data does not have (classes: {classes})")
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = images_under(os.path.join(root, name)) if name in present else []
        if require_all and not found:
            raise ValueError(f"load_dataset: no images ({', '.join(IMAGE_EXTENSIONS)}) in "
                             f"{os.path.join(root, name)}")
        for path in found:
            check_image(path)
        paths += found
        labels += [label] * len(found)
    return paths, labels


def load_images(paths: list[str], img_size: int) -> Tensor:
    """All images resized to img_size, as one uint8 N x C x S x S tensor (C = 3 if any image is
    in colour, else 1)."""
    images = [to_uint8(resize(read_image(p), img_size)) for p in paths]
    channels = max(im.shape[0] for im in images)
    return torch.stack([im.expand(channels, -1, -1) for im in images])
