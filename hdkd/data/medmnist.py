"""MedMNIST .npz files (e.g. DermaMNIST): train/val/test images and labels in one archive."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

SPLITS = ("train", "val", "test")


def _images(path: str, key: str, array: np.ndarray) -> Tensor:
    """N x H x W or N x H x W x C (C = 1 or 3) uint8 to N x C x H x W."""
    if array.dtype != np.uint8:
        raise ValueError(f"load_dataset: {path}: expected {key} to be uint8, got {array.dtype}")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"load_dataset: {path}: expected {key} of shape N x H x W or "
                         f"N x H x W x C with C 1 or 3, got {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array))


def _labels(path: str, key: str, array: np.ndarray, count: int) -> list[int]:
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or len(array) != count:
        raise ValueError(f"load_dataset: {path}: expected {key} of shape ({count},) or "
                         f"({count}, 1) (one class per image; multi-label sets are not "
                         f"supported), got {array.shape}")
    if not np.issubdtype(array.dtype, np.integer) or (len(array) and array.min() < 0):
        raise ValueError(f"load_dataset: {path}: expected {key} to hold class indices >= 0, "
                         f"got dtype {array.dtype}")
    return [int(y) for y in array]


def read_npz(path: str) -> dict[str, tuple[Tensor, list[int]]]:
    """{split: (uint8 N x C x H x W images, labels)} for the splits present; train and test are
    required, val is optional."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"load_dataset: cannot read {path} as a .npz archive: {exc}") from exc
    with archive:
        keys = set(archive.files)
        needed = [f"{s}_{kind}" for s in ("train", "test") for kind in ("images", "labels")]
        missing = [k for k in needed if k not in keys]
        if missing:
            raise ValueError(f"load_dataset: {path} lacks {missing}; a MedMNIST archive has "
                             f"train_images, train_labels, [val_images, val_labels,] test_images, "
                             f"test_labels (found: {sorted(keys)})")
        out = {}
        for split in SPLITS:
            if f"{split}_images" in keys and f"{split}_labels" in keys:
                images = _images(path, f"{split}_images", archive[f"{split}_images"])
                labels = _labels(path, f"{split}_labels", archive[f"{split}_labels"], len(images))
                out[split] = (images, labels)
    return out
