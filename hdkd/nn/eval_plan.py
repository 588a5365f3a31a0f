"""EvalPlan: what a module's eval forward resolved to (its arguments checked, its backend chosen,
its cached weights looked up: the op left to run, or the weights to run with), kept for the next
call while nothing it depends on has changed.

At batch 1 on a CPU, a block's Python (building its weight tuples, stamping its cache sources,
checking arguments, resolving the backend) costs the model more than that Python's own time
(benchmarks/NOTES.md). A plan is checked instead, in a few microseconds:
- every parameter, buffer and submodule of the module is the same object as when the plan was
  made, every tensor on the same storage at the same version (as hdkd.nn.eval_cache tells a
  change), and no forward hook was added or removed below it;
- the caller's key (input_key: the input's dtype, device, shape and strides, autocast's dtype;
  and the caller's settings, such as the backend) is equal.
Plans are made and used only in eval without gradients, outside tracing, compiling and
exporting (may_plan). Not pickled or deep-copied.
"""
from __future__ import annotations

import operator

import torch
from torch import nn

from ..ops.measured import compute_dtype


def may_plan(module: nn.Module, x) -> bool:
    """Whether module(x) may make or use a plan."""
    return isinstance(x, torch.Tensor) and not (
        module.training or torch.is_grad_enabled() or torch.compiler.is_compiling()
        or torch.jit.is_tracing() or torch.compiler.is_exporting())


def input_key(x: torch.Tensor) -> tuple:
    return x.dtype, x.device, x.shape, x.stride(), compute_dtype(x)


def _snapshot(module: nn.Module, root: bool = True) -> list:
    """(the module, its parameters, buffers and submodules, its forward hooks), for the module
    (None: the root, which the plan's owner passes in) and every submodule below it."""
    out = [(None if root else module, tuple(module._parameters.values()),
            tuple(module._buffers.values()), tuple(module._modules.values()), _hooks(module))]
    for child in module._modules.values():
        if child is not None:
            out += _snapshot(child, root=False)
    return out


def _hooks(module: nn.Module) -> tuple[int, int]:
    return len(module._forward_hooks), len(module._forward_pre_hooks)


def _same(current: dict, seen: tuple) -> bool:
    return len(current) == len(seen) and all(map(operator.is_, current.values(), seen))


class EvalPlan:
    def __init__(self) -> None:
        # (key, value, snapshot, [(tensor, data_ptr, version)]), replaced whole, so that a
        # thread never reads one plan's key with another's value
        self._plan = None
        self.made = 0  # how many plans were made (tests)

    def get(self, module: nn.Module, key):
        """The plan's value when it holds for module and key, else None."""
        plan = self._plan
        if plan is None or key != plan[0]:
            return None
        _, value, tree, versions = plan
        # each submodule is checked as its parent's entry, so the snapshot's objects are the
        # module's as they are now, down from the root
        for m, params, buffers, modules, hooks in tree:
            m = module if m is None else m
            if not (_same(m._parameters, params) and _same(m._buffers, buffers)
                    and _same(m._modules, modules) and _hooks(m) == hooks):
                return None
        for t, ptr, version in versions:
            if t.data_ptr() != ptr or t._version != version:
                return None
        return value

    def set(self, module: nn.Module, key, value) -> None:
        """value: what get returns while the plan holds; it must not refer to module (the
        plan would then keep the module alive in a reference cycle)."""
        tree = _snapshot(module)
        tensors = [t for _, params, buffers, _, _ in tree for t in (*params, *buffers)
                   if t is not None]
        if any(t.is_inference() for t in tensors):  # no version counter to tell a change
            self._plan = None
            return
        self._plan = (key, value, tree, [(t, t.data_ptr(), t._version) for t in tensors])
        self.made += 1

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def __deepcopy__(self, memo):
        return EvalPlan()
