"""EvalCache: tensors derived from a module's parameters and buffers (BN folded into a conv,
weights in the layout a kernel wants), computed once and reused by eval forwards until one of
the source tensors changes.

A source "changes" when it is replaced (`.to()`, `load_state_dict(assign=True)`, a new
Parameter: another storage) or updated in place (`load_state_dict`, an optimizer step, BN
running statistics in training: its version counter moves). Nothing is cached while tracing or
compiling (the derivation is then part of the graph) or when a source is an inference tensor
(those have no version counter). The cache is not part of the state_dict and is not pickled.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import Tensor

from ..ops import rules


def _stamp(t: Tensor) -> tuple:
    return (t.data_ptr(), t._version, t.dtype, t.device, t.shape, t.stride())


def records_grad(module: torch.nn.Module, x: Tensor) -> bool:
    """Whether module(x) builds an autograd graph: then its differentiable path runs, not the
    cached eval weights."""
    return torch.is_grad_enabled() and rules.records_grad([x, *module.parameters()])


def caching_allowed(sources: Iterable[Optional[Tensor]]) -> bool:
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    return not any(t is not None and t.is_inference() for t in sources)


class EvalCache:
    """One cached value: get(sources, derive) returns derive(), recomputed only when a source
    tensor differs from the last call (see the module doc)."""

    def __init__(self) -> None:
        self._entry: Optional[tuple] = None  # (key, value), replaced whole (threads)
        self.computed = 0  # how many times derive() ran (tests, benchmarks)

    def get(self, sources: list[Optional[Tensor]], derive: Callable[[], object], extra=()):
        """extra: hashable settings the derivation also depends on (a BN's eps)."""
        if not caching_allowed(sources):
            return derive()
        key = (extra, *(None if t is None else _stamp(t) for t in sources))
        entry = self._entry
        if entry is not None and entry[0] == key:
            return entry[1]
        # ordinary tensors even under inference_mode, so that later calls outside it may use
        # them too
        with torch.inference_mode(False), torch.no_grad():
            value = derive()
        self._entry = (key, value)
        self.computed += 1
        return value

    # Not pickled or deep-copied with its module: a copy recomputes on its first eval call.
    def __getstate__(self):
        return {"computed": 0}

    def __setstate__(self, state):
        self.__init__()

    def __deepcopy__(self, memo):
        return EvalCache()
