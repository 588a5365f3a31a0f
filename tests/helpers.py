"""Shared test helpers: tolerances by dtype, relative-error comparison, memory layouts, twin
leaves (the tensors under test and their float64 twins)."""
from __future__ import annotations

import torch

# ||out - ref|| / ||ref|| bounds against a float64 reference, for every backend: the numerics
# target of docs/performance.md (section 2) for float32 and bfloat16; float16, with 3 more
# mantissa bits than bfloat16, gets half the bfloat16 bound (room for the rounding of a few
# stored intermediates).
REL_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 1e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64, on the CPU (the two may be on different devices)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """t as "contiguous", "channels_last" or "strided" (a non-contiguous view, every other column
    of a wider tensor, holding the same values)."""
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "strided":
        wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        view = wide[..., ::2]
        assert not view.is_contiguous()
        return view
    return t.contiguous()


def twins(values, dtype: torch.dtype, device, kind: str = "contiguous"):
    """(leaves for the code under test, float64 leaves holding exactly the same values).

    values: float64 tensors; each is rounded to dtype first, so a comparison measures the code
    under test, not the rounding of its inputs. The first (the activation) is put in memory
    layout `kind`; the float64 twins are contiguous, on the same device."""
    ours, refs = [], []
    for i, t in enumerate(values):
        low = t.to(dtype)
        if i == 0:
            low = layout(low, kind)
        ours.append(low.to(device).detach().requires_grad_())
        refs.append(low.double().contiguous().to(device).detach().requires_grad_())
    return ours, refs


def reference_max(y_ref: torch.Tensor, y: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
    """The per-channel max of the float64 reference output y_ref, its gradient split evenly among
    the pixels where the output y under test, as stored, equals its max mx: torch.amax's rule
    applied to the values a backend returns. In a low-precision dtype, rounding can tie pixels
    whose float64 values differ, and then amax of the returned y splits the gradient where the
    float64 reference would give it to one pixel."""
    tied = y.detach().to(y_ref) == mx.detach().to(y_ref)[:, :, None, None]
    return (y_ref * tied).sum((2, 3)) / tied.sum((2, 3))


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
