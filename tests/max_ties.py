"""The max reductions' semantics, shared by the tests of every backend: inputs whose maxima are
tied, and checks that a backend splits a max's gradient evenly among the tied values, as
torch.amax does (the reference's rule); and that a NaN makes a max NaN, as in torch.amax.

The tie inputs are small integers and dyadic fractions, exact in float32, bfloat16 and float16
alike, so the tied values are equal in every dtype and in the float64 reference.
"""
from __future__ import annotations

import torch

from helpers import REL_TOL, rel_err
from hdkd.ops import reference as R

# 11 channels: the CPU kernels' 8-wide vector loops and their scalar tails both see ties and NaN
ATTENTION_SHAPE = (2, 11, 5, 4)
DWCONV_SHAPE = (2, 11, 6, 7)


def attention_inputs() -> list[torch.Tensor]:
    """(h, fc1, fc2, sa_weight), float64. h holds integers in [-2, 2], so several pixels share
    each channel's max; in its first row channels 0, 5 and 9 are 0 and the others -1, so at
    those pixels three channels are tied at max_c(h * ca) = 0."""
    g = torch.Generator().manual_seed(0)
    b, c, _, _ = ATTENTION_SHAPE
    h = torch.randint(-2, 3, ATTENTION_SHAPE, generator=g).double()
    h[:, :, 0] = -1.0
    h[:, [0, 5, 9], 0] = 0.0
    return [h, torch.randn(1, c, 1, 1, generator=g, dtype=torch.float64) * 0.3,
            torch.randn(c, 1, 1, 1, generator=g, dtype=torch.float64) * 0.3,
            torch.randn(1, 2, 7, 7, generator=g, dtype=torch.float64) * 0.3]


def dwconv_inputs(k: int = 3) -> list[torch.Tensor]:
    """(x, weight, gamma, beta, running_mean, running_var), float64. x is constant on each channel
    plane and the weights and BN affine are positive, so every pixel whose k x k window lies
    inside the image has the channel's largest output: (H - k + 1) * (W - k + 1) tied pixels."""
    g = torch.Generator().manual_seed(1)
    b, c, hh, ww = DWCONV_SHAPE
    x = torch.randint(1, 4, (b, c, 1, 1), generator=g).double().expand(DWCONV_SHAPE).contiguous()
    w = torch.randint(2, 12, (c, 1, k, k), generator=g).double() / 8
    gamma = torch.randint(4, 12, (c,), generator=g).double() / 32
    beta = torch.randint(1, 8, (c,), generator=g).double() / 8
    return [x, w, gamma, beta, torch.zeros(c, dtype=torch.float64),
            torch.ones(c, dtype=torch.float64)]


def reference_max(y_ref: torch.Tensor, y: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
    """The per-channel max of the float64 reference output y_ref, its gradient split evenly among
    the pixels where the output y under test, as stored, equals its max mx: torch.amax's rule
    applied to the values a backend returns. In a low-precision dtype, rounding can tie pixels
    whose float64 values differ, and then amax of the returned y splits the gradient where the
    float64 reference would give it to one pixel."""
    tied = y.detach().cpu().double() == mx.detach().cpu().double()[:, :, None, None]
    return (y_ref * tied).sum((2, 3)) / tied.sum((2, 3))


def _leaves(tensors, dtype, device, first_layout=None):
    out = []
    for i, t in enumerate(tensors):
        t = t.to(dtype)
        if i == 0 and first_layout is not None:
            t = first_layout(t)
        out.append(t.to(device).detach().requires_grad_())
    return out


def _check_grads(ours, refs, dtype, what):
    for i, (a, b) in enumerate(zip(ours, refs)):
        assert a.grad is not None, f"{what}: no gradient for input {i}"
        err = rel_err(a.grad.cpu(), b.grad)
        assert err < 2 * REL_TOL[dtype], f"{what}: input {i} gradient rel. error {err:.2e}"


def check_attention_ties(run, dtype, device, first_layout=None):
    """run(h, fc1, fc2, sa_weight) -> CBAM output of the backend under test."""
    base = attention_inputs()
    ours, refs = _leaves(base, dtype, device, first_layout), _leaves(base, torch.float64, "cpu")
    out = run(*ours)
    ref = R.channel_spatial_attention(*refs)
    h = base[0]
    assert (h == h.amax((2, 3), keepdim=True)).sum((2, 3)).max() > 1, "no tied channel max"
    assert rel_err(out.cpu(), ref) < REL_TOL[dtype]
    cot = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    (out.float() * cot.to(device).float()).sum().backward()
    (ref * cot.double()).sum().backward()
    _check_grads(ours, refs, dtype, f"attention ties {dtype}")


def check_dwconv_ties(run, dtype, device, training, first_layout=None, eps=1e-5):
    """run(x, weight, bn, training, eps) -> (y, avg, max) of the backend under test."""
    base = dwconv_inputs()
    stats = base[4:]
    ours = _leaves(base[:4], dtype, device, first_layout)
    refs = _leaves(base[:4], torch.float64, "cpu")
    y, avg, mx = run(ours[0], ours[1],
                     R.BatchNormState(ours[2], ours[3], *[s.to(dtype).to(device) for s in stats]),
                     training, eps)
    yr, avgr, _ = R.dwconv_bn_gelu(refs[0], refs[1],
                                   R.BatchNormState(refs[2], refs[3], *[s.clone() for s in stats]),
                                   training, 0.1, eps)
    tied = y.detach().cpu().double() == mx.detach().cpu().double()[:, :, None, None]
    b, c, hh, ww = DWCONV_SHAPE
    assert torch.equal(tied.sum((2, 3)), torch.full((b, c), (hh - 2) * (ww - 2))), \
        "the interior pixels should be tied at each channel's max"
    mxr = reference_max(yr, y, mx)
    what = f"dwconv ties {dtype} train={training}"
    for a, r, name in ((y, yr, "y"), (avg, avgr, "avg"), (mx, mxr, "max")):
        assert rel_err(a.cpu(), r) < REL_TOL[dtype], f"{what}: {name}"
    g = torch.Generator().manual_seed(3)
    cots = [torch.randn(r.shape, generator=g).to(dtype) for r in (yr, avgr, mxr)]
    sum(((o.float() * t.to(device).float()).sum() for o, t in zip((y, avg, mx), cots))).backward()
    sum(((r * t.double()).sum() for r, t in zip((yr, avgr, mxr), cots))).backward()
    _check_grads(ours, refs, dtype, what)


def check_dwconv_nan(run, device):
    """A NaN input makes its channel's max NaN, as torch.amax does (a max that skipped it would
    report a finite value for a channel whose outputs are not)."""
    g = torch.Generator().manual_seed(4)
    b, c, hh, ww = DWCONV_SHAPE
    x = torch.randn(DWCONV_SHAPE, generator=g)
    x[0, 1, 2, 3] = float("nan")
    x[1, 9, 0, 0] = float("nan")
    w = torch.randn(c, 1, 3, 3, generator=g) * 0.3
    bn = [torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g) * 0.1,
          torch.zeros(c), torch.ones(c)]
    y, avg, mx = run(x.to(device), w.to(device), R.BatchNormState(*[t.to(device) for t in bn]),
                     False, 1e-5)
    ref = R.dwconv_bn_gelu(x.double(), w.double(), R.BatchNormState(*[t.double() for t in bn]),
                           False)
    for name, a, r in zip(("y", "avg", "max"), (y, avg, mx), ref):
        nan = r.isnan()
        assert nan.any() and not nan.all(), name
        assert torch.equal(a.detach().cpu().isnan(), nan), f"{name}: NaN where the reference has"
        assert rel_err(a.detach().cpu()[~nan], r[~nan]) < REL_TOL[torch.float32], name
