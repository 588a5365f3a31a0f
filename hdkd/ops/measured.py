"""Measured backend speeds: which backend was fastest for an op call, read from a table shipped
with the package (measured_backends.json, written by benchmarks/choose_backends.py).

The table has, per device kind ("cpu", "cuda"), where and when it was measured and one entry per
measured case: op (a workload name, see WORKLOADS), dtype, format ("contiguous" or
"channels_last"), grad (forward+backward, else a no-grad forward), shape of the op's main input,
the median ms of every backend timed and the winner. A call is matched on kind, op, dtype, format
and grad; among those entries the one nearest in size (numel of the main input) in log space
gives the ranking, fastest first.

The table is parsed when this module is imported: the lookup runs inside torch.compile graphs,
so it must be plain Python over dtype, shape and strides, with no file access.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch

from .op_table import WORKLOADS  # noqa: F401 (re-exported: measured workload -> its op)
from .rules import output_memory_format

TABLE_FILE = os.path.join(os.path.dirname(__file__), "measured_backends.json")
SCHEMA = 1

FORMATS = ("contiguous", "channels_last")
# the Triton interpreter is a correctness tool, never a measured candidate on the CPU
EXCLUDED = {"cpu": ("triton",)}

Key = tuple[str, str, str, str, bool]  # kind, op, dtype, format, grad


def memory_format(x: torch.Tensor) -> str:
    """The table's format of x: channels_last when x is channels_last and not also contiguous
    (C == 1 or H == W == 1 make it both), else contiguous (the kernels copy other strides): the
    memory format of the ops' outputs (hdkd.ops.rules)."""
    return "channels_last" if output_memory_format(x) == torch.channels_last else "contiguous"


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """x's dtype, or the autocast dtype when autocast is on for x's device and x is float32 (the
    op then runs at the autocast precision)."""
    kind = x.device.type
    if x.dtype == torch.float32 and kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


_DTYPES = ((torch.float32, "float32"), (torch.bfloat16, "bfloat16"), (torch.float16, "float16"),
           (torch.float64, "float64"))


def dtype_name(dtype: torch.dtype) -> str:
    # comparisons rather than str(dtype): this runs while torch.compile traces
    for dt, name in _DTYPES:
        if dtype == dt:
            return name
    return "other"


def ranking_of(ms: dict[str, float]) -> tuple[str, ...]:
    """Backends by median time, fastest first (ties by name, so the order is stable)."""
    return tuple(sorted(ms, key=lambda name: (ms[name], name)))


@dataclass(frozen=True)
class _Sizes:
    """The entries of one key, by size: bounds[i] is the geometric mean of sizes i and i + 1,
    so a size below bounds[i] (and not below bounds[i - 1]) is nearest to entry i in log space."""

    bounds: tuple[float, ...]
    rankings: tuple[tuple[str, ...], ...]

    def nearest(self, size) -> tuple[str, ...]:
        for bound, ranking in zip(self.bounds, self.rankings):
            if size < bound:
                return ranking
        return self.rankings[-1]


class Table:
    """A parsed table: raw (the JSON object) and an index for lookups."""

    def __init__(self, raw: dict):
        self.raw = raw
        by_key: dict[Key, list[tuple[int, tuple[str, ...]]]] = {}
        for kind, device in raw.get("devices", {}).items():
            for e in device["entries"]:
                key = (kind, e["op"], e["dtype"], e["format"], bool(e["grad"]))
                ms = {b: t for b, t in e["ms"].items() if b not in EXCLUDED.get(kind, ())}
                by_key.setdefault(key, []).append((math.prod(e["shape"]), ranking_of(ms)))
        self._index = {}
        for key, rows in by_key.items():
            rows.sort()
            sizes = [s for s, _ in rows]
            bounds = tuple(math.sqrt(a * b) for a, b in zip(sizes, sizes[1:]))
            self._index[key] = _Sizes(bounds, tuple(r for _, r in rows))
        self._kinds = frozenset(k for k, _, _, _, _ in self._index)

    @classmethod
    def load(cls, path: str = TABLE_FILE) -> "Table":
        if not os.path.exists(path):
            return cls({"schema": SCHEMA, "devices": {}})
        with open(path) as f:
            return cls(json.load(f))

    def has_kind(self, kind: str) -> bool:
        return kind in self._kinds

    def devices(self) -> dict[str, dict]:
        """kind -> its measurement record (device, threads, torch, hdkd_commit, date, entries)."""
        return dict(self.raw.get("devices", {}))

    def ranking(self, kind: str, op: str, dtype: torch.dtype, fmt: str, grad: bool,
                size) -> tuple[str, ...]:
        """The measured backends, fastest first, for the nearest measured size; () when this
        kind / op / dtype / format / grad was not measured."""
        sizes = self._index.get((kind, op, dtype_name(dtype), fmt, grad))
        return sizes.nearest(size) if sizes is not None else ()


TABLE = Table.load()


def ranking(kind: str, op: str, x: torch.Tensor, grad: bool) -> tuple[str, ...]:
    """The measured ranking for a call of op (a WORKLOADS name) on main input x."""
    if not TABLE.has_kind(kind):
        return ()
    return TABLE.ranking(kind, op, compute_dtype(x), memory_format(x), grad, x.numel())


def summary_lines(kind: str, table: Optional[Table] = None) -> list[str]:
    """A compact table of kind's measured choices: one line per op / dtype / format / grad, each
    measured shape with its winner and the winner's speed-up over torch."""
    table = table or TABLE
    groups: dict[tuple, list[dict]] = {}
    for e in table.devices().get(kind, {}).get("entries", []):
        groups.setdefault((e["op"], e["dtype"], e["format"], e["grad"]), []).append(e)
    lines = [f"{'op':25s} {'dtype':9s} {'format':14s} {'grad':4s} shape -> winner (x torch)"]
    for (op, dtype, fmt, grad), entries in groups.items():
        cells = []
        for e in sorted(entries, key=lambda e: math.prod(e["shape"])):
            winner = ranking_of(e["ms"])[0]
            speedup = f" {e['ms']['torch'] / e['ms'][winner]:.2f}x" if winner != "torch" else ""
            cells.append(f"{'x'.join(map(str, e['shape']))} -> {winner}{speedup}")
        lines.append(f"{op:25s} {dtype:9s} {fmt:14s} {'yes' if grad else 'no':4s} "
                     + " | ".join(cells))
    return lines
