"""The groups file of a grouped split: which patient (or lesion) each image belongs to, so that
no group is divided between train, validation and test."""
from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_SHOWN = 10  # names listed in an error, then a count of the rest


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(map(repr, names[:_SHOWN]))
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def image_key(path: str, root: str) -> str:
    """How a groups file names an image of a folder: its path relative to the data folder, with
    forward slashes (benign/ISIC_0024306.jpg)."""
    return Path(os.path.relpath(path, root)).as_posix()


def read_groups(path: str, image_keys: Sequence[str]) -> np.ndarray:
    """The group id of every image, in the order of image_keys, from a CSV file with the header
    `image,group` and one row per image: its key (see image_key; for the digits data, the index)
    and its patient or lesion id. Every image must be covered exactly once and every row must name
    an image of the data; the errors list the offenders."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--groups: {path!r} does not exist")
    with file.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        if header[:2] != ["image", "group"]:
            raise ValueError(f"--groups: {path!r} must start with the header line 'image,group' "
                             f"(found {','.join(header) or 'an empty file'!r})")
        rows = [row for row in reader if any(cell.strip() for cell in row)]
    groups: dict[str, str] = {}
    malformed, repeated = [], []
    for number, row in enumerate(rows, start=2):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            malformed.append(f"line {number}")
            continue
        key, group = Path(row[0].strip()).as_posix(), row[1].strip()
        if key in groups:
            repeated.append(key)
        groups[key] = group
    if malformed:
        raise ValueError(f"--groups: {path!r}: rows without an image and a group: "
                         f"{', '.join(malformed[:_SHOWN])}")
    if repeated:
        raise ValueError(f"--groups: {path!r} names these images more than once: "
                         f"{_listing(repeated)}")
    known = set(image_keys)
    unknown = [k for k in groups if k not in known]
    missing = [k for k in image_keys if k not in groups]
    problems = []
    if missing:
        problems.append(f"it does not cover {len(missing)} image(s) of the data: "
                        f"{_listing(missing)}")
    if unknown:
        problems.append(f"it names {len(unknown)} image(s) the data does not have: "
                        f"{_listing(unknown)}")
    if problems:
        raise ValueError(f"--groups: {path!r}: " + "; ".join(problems) +
                         " (images are named by their path relative to the data folder, or by "
                         "their index for the digits data)")
    return np.array([groups[k] for k in image_keys], dtype=object)
