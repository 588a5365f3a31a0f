"""The train / validation / test splits and their stratified construction."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset


@dataclass
class DatasetSplits:
    """What load_dataset returns. Each split yields (normalised 3 x S x S float tensor, int label)
    and has a `.labels` list; `train_labels` are the training labels (after any SMOTE)."""
    train: Dataset
    val: Dataset
    test: Dataset
    classes: list[str]
    train_labels: list[int]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"load_dataset: expected {name} in [0, 1), got {value}")


def _allocate(counts: np.ndarray, total: int, caps: np.ndarray) -> np.ndarray:
    """Split `total` over classes in proportion to counts (largest remainder), at most caps."""
    exact = counts * total / counts.sum()
    alloc = np.minimum(np.floor(exact).astype(np.int64), caps)
    remainder = exact - alloc
    while alloc.sum() < total and (alloc < caps).any():
        i = int(np.argmax(np.where(alloc < caps, remainder, -np.inf)))
        alloc[i] += 1
        remainder[i] -= 1
    return alloc


def _split_size(n: int, fraction: float) -> int:
    """round(n * fraction), half up, and at least one item for a positive fraction."""
    return max(1, int(np.floor(n * fraction + 0.5))) if fraction > 0 else 0


def stratified_split(labels: Sequence[int], val_fraction: float, test_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) sorted index arrays. The test and validation splits get round(n *
    fraction) items, shared out over the classes in proportion to their sizes (largest
    remainder), and every class keeps at least one training item; which items go where is
    drawn with `seed`, so the same seed gives the same split."""
    check_fraction("val_fraction", val_fraction)
    check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"load_dataset: val_fraction + test_fraction must be < 1, got "
                         f"{val_fraction} + {test_fraction}")
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("load_dataset: no images to split")
    classes, counts = np.unique(labels, return_counts=True)
    n_test = _allocate(counts, _split_size(len(labels), test_fraction), counts - 1)
    n_val = _allocate(counts, _split_size(len(labels), val_fraction), counts - 1 - n_test)
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for cls, t, v in zip(classes, n_test, n_val):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        parts[2].append(idx[:t])
        parts[1].append(idx[t:t + v])
        parts[0].append(idx[t + v:])
    return tuple(np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts)


def require_nonempty(split: str, indices: np.ndarray, fraction: float, total: int) -> None:
    if len(indices) == 0:
        raise ValueError(f"load_dataset: the {split} split is empty ({split}_fraction={fraction} "
                         f"of {total} images leaves none, as every class needs a training "
                         f"image); raise {split}_fraction or add images")


def named_classes(data_classes, names) -> list[str]:
    """The class names a run uses: `names` (renaming the data's classes, in the same order) when
    given, else the data's own. Each name must be distinct and non-empty, one per class."""
    data_classes = list(data_classes)
    if names is None:
        return data_classes
    names = [str(n).strip() for n in names]
    if len(names) != len(data_classes) or not all(names) or len(set(names)) != len(names):
        raise ValueError(f"classes: expected {len(data_classes)} distinct non-empty names for the "
                         f"data's classes {data_classes}, got {names}")
    return names
