"""Help for imbalanced classes: a class-balanced sampler and SMOTE oversampling."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler


def class_balanced_sampler(labels: Sequence[int], seed: int,
                           num_samples: int | None = None) -> WeightedRandomSampler:
    """Draws every class equally often on average (weight 1 / class count, with replacement),
    from its own generator seeded with `seed`; num_samples defaults to len(labels)."""
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    if labels_t.numel() == 0:
        raise ValueError("class_balanced_sampler: labels is empty")
    counts = torch.bincount(labels_t).double()
    weights = 1.0 / counts[labels_t]
    generator = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(weights, num_samples or len(labels_t), replacement=True,
                                 generator=generator)


def _nearest_neighbours(x: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """Indices of the k nearest other rows of x (squared Euclidean distance), n x k."""
    sq = np.einsum("ij,ij->i", x, x)
    out = np.empty((len(x), k), dtype=np.int64)
    for start in range(0, len(x), chunk):
        rows = slice(start, start + chunk)
        d2 = sq[rows, None] + sq[None, :] - 2.0 * (x[rows] @ x.T)
        d2[np.arange(d2.shape[0]), np.arange(start, start + d2.shape[0])] = np.inf
        nearest = np.argpartition(d2, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(d2, nearest, axis=1).argsort(axis=1, kind="stable")
        out[rows] = np.take_along_axis(nearest, order, axis=1)
    return out


def smote_oversample(images: np.ndarray, labels: Sequence[int], seed: int, k_neighbors: int = 5,
                     targets: Mapping[int, int] | None = None) -> tuple[np.ndarray, list[int]]:
    """SMOTE on flattened images: a class below its target gets synthetic samples
    x + u * (neighbour - x), u ~ U[0, 1), with the neighbour drawn from the k nearest images of
    the same class, until it has `targets[class]` images (classes not in targets keep their
    count); targets=None makes every class as large as the largest. Returns the original images
    followed by the synthetic ones (same dtype; uint8 is rounded) and their labels."""
    labels_a = np.asarray(labels, dtype=np.int64)
    if len(images) != len(labels_a):
        raise ValueError(f"smote_oversample: {len(images)} images but {len(labels_a)} labels")
    if k_neighbors < 1:
        raise ValueError(f"smote_oversample: expected k_neighbors >= 1, got {k_neighbors}")
    classes, counts = np.unique(labels_a, return_counts=True)
    have = dict(zip(classes.tolist(), counts.tolist()))
    if targets is None:
        targets = {cls: int(counts.max()) for cls in have}
    for cls, target in targets.items():
        if have.get(cls, 0) == 0 and target > 0:
            raise ValueError(f"smote_oversample: class {cls} has no samples to oversample "
                             f"(target {target})")
        if target < have.get(cls, 0):
            raise ValueError(f"smote_oversample: class {cls} has {have[cls]} samples, more than "
                             f"its target {target}; SMOTE only adds samples")
    rng = np.random.default_rng(seed)
    flat = images.reshape(len(images), -1)
    new_images, new_labels = [], []
    for cls, count in zip(classes, counts):
        missing = int(targets.get(int(cls), count) - count)
        if missing == 0:
            continue
        members = flat[labels_a == cls].astype(np.float32)
        base = rng.integers(0, count, size=missing)
        if count == 1:  # no neighbour to interpolate with: copies
            synthetic = members[base]
        else:
            k = min(k_neighbors, count - 1)
            neighbours = _nearest_neighbours(members, k)[base, rng.integers(0, k, size=missing)]
            gap = rng.random((missing, 1), dtype=np.float32)
            synthetic = members[base] + gap * (members[neighbours] - members[base])
        if np.issubdtype(images.dtype, np.integer):
            info = np.iinfo(images.dtype)
            synthetic = np.clip(np.rint(synthetic), info.min, info.max)
        new_images.append(synthetic.astype(images.dtype).reshape(missing, *images.shape[1:]))
        new_labels += [int(cls)] * missing
    if not new_images:
        return images, labels_a.tolist()
    return np.concatenate([images, *new_images]), labels_a.tolist() + new_labels
