"""Shared test helpers: tolerances by dtype and relative-error comparison."""
from __future__ import annotations

import torch

# ||out - ref|| / ||ref|| bounds against a float64 reference (PERFORMANCE.md, "numerics").
REL_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def assert_close_rel(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = rel_err(out, ref)
    assert err < REL_TOL[dtype], f"{what}: relative error {err:.3e} >= {REL_TOL[dtype]:.0e} ({dtype})"


def run_outside_checkout(args: list, **kwargs):
    """subprocess.run from a temporary folder: `python -c` and `python -m` put the working
    directory first on sys.path, and from the checkout's root that would import the source tree
    (no compiled hdkd._C, no hdkd.kernels) instead of the installed package under test."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run(args, cwd=cwd, capture_output=True, text=True, **kwargs)
