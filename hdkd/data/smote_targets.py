"""Per-class SMOTE targets from a JSON file (class name -> wanted number of training images), as
the original's class distribution file gives them."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path


def read_smote_targets(path: str) -> dict[str, int]:
    """The {class name: count} object of `path`; errors name the file and the bad entries."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--smote-targets: {path!r} does not exist")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--smote-targets: {path!r} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"--smote-targets: {path!r} must hold a non-empty JSON object "
                         f"{{\"class name\": count, ...}}, found {type(data).__name__}")
    bad = [name for name, n in data.items()
           if isinstance(n, bool) or not isinstance(n, int) or n < 0]
    if bad:
        raise ValueError(f"--smote-targets: {path!r}: expected a whole number >= 0 for every "
                         f"class; not one for: {', '.join(f'{b!r} ({data[b]!r})' for b in bad)}")
    return {str(name): int(n) for name, n in data.items()}


def resolve_smote_targets(targets: Mapping[str, int], classes: Sequence[str],
                          train_labels: Sequence[int]) -> dict[int, int]:
    """{class index: count} for smote_oversample, checked against the data's class names and the
    training split's counts (SMOTE only adds images)."""
    unknown = sorted(set(targets) - set(classes))
    if unknown:
        raise ValueError(f"--smote-targets names classes the data does not have: "
                         f"{', '.join(map(repr, unknown))} (its classes: "
                         f"{', '.join(map(repr, classes))})")
    index = {name: i for i, name in enumerate(classes)}
    have = [0] * len(classes)
    for y in train_labels:
        have[y] += 1
    too_small = [f"{name!r} (target {n}, {have[index[name]]} training images)"
                 for name, n in targets.items() if n < have[index[name]]]
    if too_small:
        raise ValueError(f"--smote-targets: SMOTE only adds images, but these targets are below "
                         f"the training split's count: {', '.join(too_small)}")
    empty = [repr(name) for name, n in targets.items() if n > 0 and have[index[name]] == 0]
    if empty:
        raise ValueError(f"--smote-targets: no training image to oversample for "
                         f"{', '.join(empty)}")
    return {index[name]: n for name, n in targets.items()}
