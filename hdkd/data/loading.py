"""load_dataset: one entry point for the digits demo data, image folders and MedMNIST .npz."""
from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from .augment import TrainAugment
from .datasets import ArrayImageDataset, ImageFileDataset, prepare_array
from .digits import digits_images
from .folders import class_folders, load_images, scan_split
from .folds import check_folds, split_indices
from .groups import image_key
from .medmnist import read_npz
from .medmnist_labels import medmnist_class_names
from .sampling import smote_oversample
from .smote_targets import resolve_smote_targets
from .splits import DatasetSplits, check_fraction, require_nonempty, stratified_split


def load_dataset(source: str, img_size: int, seed: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, smote: bool = False,
                 augment: bool = True,
                 smote_targets: Mapping[str, int] | None = None, folds: int | None = None,
                 fold: int | None = None, groups: str | None = None) -> DatasetSplits:
    """Train / validation / test splits of `source`:

    - "digits": scikit-learn's handwritten digits, upsampled, split stratified by `seed`
      (val_fraction, test_fraction of every class);
    - a directory with train/ and test/ (and optionally val/) holding one sub-folder per class,
      or a directory of class sub-folders split stratified by `seed`;
    - a MedMNIST .npz file (train/val/test images and labels).

    A missing validation split is cut from the training data (val_fraction, stratified).
    augment=True applies the original train-time augmentations to the training split only;
    smote=True oversamples the training split (only) with SMOTE, every class to the largest one's
    size; smote_targets ({class name: count}, see read_smote_targets) instead oversamples the
    classes it names to those counts (and implies smote). Nothing is downloaded.

    For data that is split here (digits, a folder of class sub-folders): folds=K, fold=I makes
    fold I (0-based) of a stratified K-fold split the test split; groups (a CSV file, see
    hdkd.data.groups.read_groups) keeps each patient's images in one split.
    """
    if not isinstance(img_size, int) or img_size < 1:
        raise ValueError(f"load_dataset: expected img_size to be a positive int, got {img_size!r}")
    check_fraction("val_fraction", val_fraction)
    check_fraction("test_fraction", test_fraction)
    check_folds(folds, fold)
    how = dict(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, folds=folds,
               fold=fold, groups_file=groups)
    if source == "digits":
        images, labels, classes = digits_images(img_size)
        splits = _split_arrays(images, labels, how)
    elif os.path.isdir(source):
        return _from_folders(source, img_size, smote, augment, smote_targets, how)
    elif os.path.isfile(source) and source.lower().endswith(".npz"):
        _refuse_own_split(source, how)
        splits = read_npz(source)
        if "val" not in splits:
            splits["train"], splits["val"] = _split_val(*splits["train"], val_fraction, seed)
        num_classes = 1 + max(max(labels, default=0) for _, labels in splits.values())
        # .npz archives carry no class names; MedMNIST's are known by the file's name
        classes = medmnist_class_names(source, num_classes) or [str(i) for i in range(num_classes)]
        splits = {name: (prepare_array(im, img_size), y) for name, (im, y) in splits.items()}
    elif not os.path.exists(source):
        raise FileNotFoundError(f"load_dataset: source {source!r} does not exist (expected "
                                f"'digits', a directory of images or a MedMNIST .npz file)")
    else:
        raise ValueError(f"load_dataset: source {source!r} is not 'digits', a directory or a "
                         f".npz file")
    train_images, train_labels = splits["train"]
    if smote or smote_targets is not None:
        resampled, train_labels = smote_oversample(
            train_images.numpy(), train_labels, seed,
            targets=_targets(smote_targets, classes, train_labels))
        train_images = torch.from_numpy(resampled)
    aug = TrainAugment() if augment else None
    return DatasetSplits(
        train=ArrayImageDataset(train_images, train_labels, img_size, aug),
        val=ArrayImageDataset(*splits["val"], img_size),
        test=ArrayImageDataset(*splits["test"], img_size),
        classes=classes, train_labels=list(train_labels))


def _take(images: Tensor, labels: list[int], idx: np.ndarray) -> tuple[Tensor, list[int]]:
    return images[torch.from_numpy(idx)], [labels[i] for i in idx]


def _refuse_own_split(source: str, how: dict) -> None:
    if how["folds"] is not None or how["groups_file"]:
        raise ValueError(f"--folds / --groups split the data here, but {source!r} comes with its "
                         f"own train/test split; give the digits data or one folder of class "
                         f"sub-folders")


def _split(labels: list[int], keys: list[str], how: dict):
    """split_indices, with a clear error for an empty validation or test split."""
    train, val, test = split_indices(labels, keys, **how)
    require_nonempty("val", val, how["val_fraction"], len(labels))
    if how["folds"] is None:
        require_nonempty("test", test, how["test_fraction"], len(labels))
    return train, val, test


def _split_arrays(images, labels, how: dict):
    train, val, test = _split(labels, [str(i) for i in range(len(labels))], how)
    return {"train": _take(images, labels, train), "val": _take(images, labels, val),
            "test": _take(images, labels, test)}


def _split_val(images, labels, val_fraction, seed):
    train, val, _ = stratified_split(labels, val_fraction, 0.0, seed)
    require_nonempty("val", val, val_fraction, len(labels))
    return _take(images, labels, train), _take(images, labels, val)


def _pick(items: list, idx: np.ndarray) -> list:
    return [items[i] for i in idx]


def _targets(smote_targets, classes, train_labels):
    """smote_oversample's targets: None (equalise to the largest class) or class index -> count."""
    if smote_targets is None:
        return None
    return resolve_smote_targets(smote_targets, classes, train_labels)


def _from_folders(root, img_size, smote, augment, smote_targets, how: dict):
    seed, val_fraction = how["seed"], how["val_fraction"]
    has_train = os.path.isdir(os.path.join(root, "train"))
    has_test = os.path.isdir(os.path.join(root, "test"))
    if has_train != has_test:
        raise ValueError(f"load_dataset: {root} has {'train/' if has_train else 'test/'} but no "
                         f"{'test/' if has_train else 'train/'}; give both (val/ is optional) "
                         f"or a folder of class sub-folders to split")
    if has_train:
        _refuse_own_split(root, how)
        classes = class_folders(os.path.join(root, "train"))
        if not classes:
            raise ValueError(f"load_dataset: no class sub-folders in {os.path.join(root, 'train')}")
        train = scan_split(os.path.join(root, "train"), classes, require_all=True)
        test = scan_split(os.path.join(root, "test"), classes, require_all=False)
        if os.path.isdir(os.path.join(root, "val")):
            val = scan_split(os.path.join(root, "val"), classes, require_all=False)
        else:
            train_idx, val_idx, _ = stratified_split(train[1], val_fraction, 0.0, seed)
            require_nonempty("val", val_idx, val_fraction, len(train[1]))
            val = (_pick(train[0], val_idx), _pick(train[1], val_idx))
            train = (_pick(train[0], train_idx), _pick(train[1], train_idx))
    else:
        classes = class_folders(root)
        if not classes:
            raise ValueError(f"load_dataset: {root} has neither train/ and test/ nor class "
                             f"sub-folders")
        paths, labels = scan_split(root, classes, require_all=True)
        parts = _split(labels, [image_key(p, root) for p in paths], how)
        train, val, test = ((_pick(paths, i), _pick(labels, i)) for i in parts)
    aug = TrainAugment() if augment else None
    if smote or smote_targets is not None:
        targets = _targets(smote_targets, classes, train[1])  # bad targets fail before the reads
        images, train_labels = smote_oversample(load_images(train[0], img_size).numpy(),
                                                train[1], seed, targets=targets)
        train_set = ArrayImageDataset(torch.from_numpy(images), train_labels, img_size, aug)
    else:
        train_set = ImageFileDataset(*train, img_size, aug)
    return DatasetSplits(train=train_set, val=ImageFileDataset(*val, img_size),
                         test=ImageFileDataset(*test, img_size), classes=classes,
                         train_labels=list(train_set.labels))
