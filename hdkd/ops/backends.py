"""The backend registry: which implementation of each fused op runs.

Backends: `torch` (the reference, always there), `triton` and `ext` (registered by their modules
when importable). Selection, strongest first: a per-call/per-module backend other than "auto",
then hdkd.set_backend(...), then the HDKD_BACKEND environment variable, then "auto".

"auto" picks from measurements when the call's main input is known: hdkd.ops.measured ranks the
backends timed on this device kind for the same op, dtype, memory format and grad mode, at the
measured size nearest to the input's (benchmarks/choose_backends.py writes that table), and the
fastest one that is usable here (registered, available, runs on the device, has the op) runs.
Without measurements for the case, auto takes the first usable backend in AUTO_ORDER.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import measured
from .contract import BackendOps
from .op_table import WORKLOADS, check_op
from .reference import FoldedMBCSA

# Fastest first, for cases without measurements. The Triton interpreter is never chosen
# automatically: it is for testing. The extension's CUDA kernels are left out on CUDA until they
# have been run and timed on a GPU (auto must never pick an unmeasured path); they stay reachable
# with backend="ext".
AUTO_ORDER = {"cuda": ("triton", "torch"), "cpu": ("ext", "torch")}


class BackendUnavailableError(RuntimeError):
    """A backend was requested explicitly but cannot run here; the message says why."""


@dataclass
class Backend:
    """name; devices it runs on; ops: its implementation of each op (hdkd.ops.contract);
    unavailable_reason() returns None when the backend can run in this process, else a one-line
    reason."""

    name: str
    devices: Callable[[], tuple[str, ...]]
    ops: BackendOps = field(default_factory=BackendOps)
    unavailable_reason: Callable[[], Optional[str]] = lambda: None
    describe: Callable[[], str] = lambda: ""
    # why it does not run on a device kind it could run on in another build or machine, or None
    device_problem: Callable[[str], Optional[str]] = lambda kind: None
    # (x, folded) -> the folded MBCSA weights as its mbcsa_eval takes them for inputs like x:
    # what it would convert on every call, converted once for a caller that keeps the result
    # (hdkd.ops.functional.mbcsa_eval_runner)
    prepare_folded: Callable[[torch.Tensor, FoldedMBCSA], FoldedMBCSA] = lambda x, folded: folded


_registry: dict[str, Backend] = {}
_selected: Optional[str] = None


def register_backend(backend: Backend) -> None:
    _registry[backend.name] = backend


def unregister_backend(name: str) -> None:
    if name == "torch":
        raise ValueError("the torch backend is the reference and cannot be unregistered")
    _registry.pop(name, None)


def validate_backend_name(name: str) -> str:
    """Returns name when it is "auto" or a registered backend, else raises ValueError."""
    if name != "auto" and name not in _registry:
        known = ", ".join(["auto", *sorted(_registry)])
        raise ValueError(f"unknown hdkd backend {name!r}; expected one of: {known}")
    return name


def backends() -> dict[str, str]:
    """Each registered backend -> "available" or the reason it is not."""
    return {name: (b.unavailable_reason() or "available") for name, b in sorted(_registry.items())}


def backends_registry() -> dict[str, Backend]:
    """The registered Backend objects by name (read-only use)."""
    return dict(_registry)


def set_backend(name: Optional[str]) -> None:
    """Select the backend for every op whose caller says "auto"; None restores the default
    (HDKD_BACKEND, else auto). An unavailable backend is refused here, with the reason."""
    global _selected
    if name is not None:
        validate_backend_name(name)
        if name != "auto":
            reason = _registry[name].unavailable_reason()
            if reason:
                raise BackendUnavailableError(f"hdkd backend {name!r} is unavailable: {reason}")
    _selected = name


def get_backend() -> str:
    """The process-wide choice: set_backend(...), else HDKD_BACKEND, else "auto"."""
    if _selected is not None:
        return _selected
    env = os.environ.get("HDKD_BACKEND", "").strip()
    if env:
        try:
            validate_backend_name(env)
        except ValueError as e:
            raise ValueError(f"HDKD_BACKEND={env!r}: {e}") from None
        return env
    return "auto"


def _device_kind(device: torch.device) -> str:
    return "cuda" if device.type == "cuda" else device.type


def _usable(name: str, op: str, kind: str) -> Optional[Backend]:
    b = _registry.get(name)
    if b and getattr(b.ops, op) is not None and kind in b.devices():
        return b if b.unavailable_reason() is None else None
    return None


def resolve(op: str, device: torch.device, requested: Optional[str] = "auto",
            x: Optional[torch.Tensor] = None, grad: bool = False,
            workload: Optional[str] = None) -> Backend:
    """The backend that runs `op` for tensors on `device`. For auto, x (the op's main input),
    grad (whether the call records gradients) and workload (the measured name when it differs
    from op: dwconv_bn_gelu_train / _eval) select by measured speed. op and workload must be
    names of the op table (hdkd.ops.op_table), else ValueError."""
    check_op(op)
    if workload is not None and WORKLOADS.get(workload) != op:
        raise ValueError(f"{workload!r} is not a measured workload of the op {op!r}")
    name = requested if requested not in (None, "auto") else get_backend()
    validate_backend_name(name)
    kind = _device_kind(device)
    if name == "auto" and torch.compiler.is_exporting():
        # An exported program (torch.export, torch.onnx) holds the reference composition: standard
        # ops that ONNX Runtime, and a PyTorch without hdkd, can run (docs/deployment.md).
        return _registry["torch"]
    if name == "auto":
        measured_order = measured.ranking(kind, workload or op, x, grad) if x is not None else ()
        for candidate in (*measured_order, *AUTO_ORDER.get(kind, ("torch",))):
            b = _usable(candidate, op, kind)
            if b is not None:
                return b
        return _registry["torch"]
    b = _registry[name]
    reason = b.unavailable_reason()
    if reason:
        raise BackendUnavailableError(f"hdkd backend {name!r} is unavailable: {reason}")
    if kind not in b.devices():
        problem = b.device_problem(kind)
        raise BackendUnavailableError(
            f"hdkd backend {name!r} does not run on {device.type} tensors "
            f"(it runs on: {', '.join(b.devices()) or 'nothing here'})"
            + (f": {problem}" if problem else ""))
    if getattr(b.ops, op) is None:
        raise BackendUnavailableError(f"hdkd backend {name!r} has no {op!r} op; "
                                      f"it implements: {', '.join(sorted(b.ops.implemented()))}")
    return b
