"""Cross-validation folds and patient-grouped splits, with scikit-learn's splitters: fold I of K
(stratified; StratifiedGroupKFold when images have groups) is the test split, and the validation
split is held out of the rest the same way."""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Optional

import numpy as np

from .splits import stratified_split


def check_folds(folds: Optional[int], fold: Optional[int]) -> None:
    if (folds is None) != (fold is None):
        raise ValueError("--folds K and --fold I go together: fold I of K is the test split")
    if folds is None:
        return
    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"--folds: expected an integer >= 2, got {folds!r}")
    if not isinstance(fold, int) or not 0 <= fold < folds:
        raise ValueError(f"--fold: expected an integer in 0..{folds - 1} for --folds {folds}, "
                         f"got {fold!r}")


def _splitter(n_splits: int, seed: int, grouped: bool):
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    cls = StratifiedGroupKFold if grouped else StratifiedKFold
    return cls(n_splits=n_splits, shuffle=True, random_state=seed)


def _nth_fold(labels: np.ndarray, groups: Optional[np.ndarray], n_splits: int, fold: int,
              seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held out) positions: fold `fold` of n_splits."""
    if groups is not None and len(set(groups)) < n_splits:
        raise ValueError(f"{what}: {n_splits} folds need at least {n_splits} groups, but these "
                         f"images have {len(set(groups))}")
    if len(labels) < n_splits:
        raise ValueError(f"{what}: {n_splits} folds need at least {n_splits} images, got "
                         f"{len(labels)}")
    splits = _splitter(n_splits, seed, groups is not None).split(
        np.zeros(len(labels)), labels, groups)
    rest, held_out = next(itertools.islice(splits, fold, None))
    return np.sort(rest), np.sort(held_out)


def _hold_out(labels: np.ndarray, groups: Optional[np.ndarray], positions: np.ndarray,
              fraction: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Split positions into (kept, held out), about `fraction` held out, stratified, whole
    groups: the first of round(1 / fraction) group folds (fewer when there are fewer groups, so
    a small study holds out one whole group)."""
    if fraction <= 0:
        return positions, positions[:0]
    if groups is None:
        kept, held, _ = stratified_split(labels[positions], fraction, 0.0, seed)
    else:
        n_splits = max(2, min(int(round(1 / fraction)), len(set(groups[positions]))))
        kept, held = _nth_fold(labels[positions], groups[positions], n_splits, 0, seed, what)
    return positions[kept], positions[held]


def _share_of_rest(val_fraction: float, labels: np.ndarray, rest: np.ndarray) -> float:
    """The share of `rest` that makes val_fraction of all images, at most half of rest."""
    return min(val_fraction * len(labels) / max(len(rest), 1), 0.5)


def fold_split(labels: Sequence[int], folds: int, fold: int, val_fraction: float, seed: int,
               groups: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) sorted index arrays: test is fold `fold` of `folds` (every image is in
    exactly one test fold over the K runs of a seed), val about val_fraction of all images held
    out of the other folds; with groups, no group is in two splits."""
    check_folds(folds, fold)
    labels = np.asarray(labels)
    rest, test = _nth_fold(labels, groups, folds, fold, seed, "--folds")
    train, val = _hold_out(labels, groups, rest, _share_of_rest(val_fraction, labels, rest),
                           seed, "--val-fraction")
    return train, val, test


def group_split(labels: Sequence[int], groups: np.ndarray, val_fraction: float,
                test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) sorted index arrays with whole groups in each split; the fractions are
    met as closely as whole groups and round(1 / fraction) folds allow."""
    labels = np.asarray(labels)
    everything = np.arange(len(labels))
    rest, test = _hold_out(labels, groups, everything, test_fraction, seed, "--test-fraction")
    train, val = _hold_out(labels, groups, rest, _share_of_rest(val_fraction, labels, rest),
                           seed, "--val-fraction")
    return train, val, test


def split_indices(labels: Sequence[int], image_keys: Sequence[str], val_fraction: float,
                  test_fraction: float, seed: int, folds: Optional[int] = None,
                  fold: Optional[int] = None, groups_file: Optional[str] = None):
    """(train, val, test) index arrays of data that hdkd splits itself: fold `fold` of `folds`
    as the test split when folds is given (test_fraction unused), whole groups per split when
    groups_file is given (see read_groups), else stratified_split."""
    from .groups import read_groups

    check_folds(folds, fold)
    groups = read_groups(groups_file, image_keys) if groups_file else None
    if folds is not None:
        return fold_split(labels, folds, fold, val_fraction, seed, groups)
    if groups is not None:
        return group_split(labels, groups, val_fraction, test_fraction, seed)
    return stratified_split(labels, val_fraction, test_fraction, seed)
