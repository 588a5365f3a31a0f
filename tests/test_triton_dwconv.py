"""Triton depthwise conv + BN + GELU (+ per-channel avg / max): the strided form (expansion-1
downsampling blocks), realistic shapes on a GPU, and its argument check. The numerics on the
shared grid (dtypes, layouts, train and eval, ties, NaN) are in tests/test_conformance.py."""
import zlib

import pytest
import torch

from triton_env import DEVICE, cuda_only, no_tf32, requires_triton  # noqa: F401
from helpers import REL_TOL, layout, reference_max, rel_err, twins

import hdkd
from hdkd.ops import reference
from hdkd.ops.triton.dwconv_bn_gelu import dwconv_bn_gelu
from hdkd.ops.reference import BatchNormState

pytestmark = [requires_triton, pytest.mark.usefixtures("no_tf32")]

STRIDE_2 = [((2, 12, 9, 8), torch.float32, "channels_last", True, 2),
            ((1, 12, 9, 9), torch.bfloat16, "contiguous", False, 2)]
REALISTIC = [((8, 384, 56, 56), torch.bfloat16, "channels_last", True, 1),
             ((8, 384, 56, 56), torch.bfloat16, "channels_last", False, 1),
             ((4, 64, 112, 112), torch.float32, "contiguous", True, 2),
             ((3, 200, 13, 17), torch.float16, "strided", True, 1)]


def _check(shape, dtype, kind, training, stride):
    B, C, H, W = shape
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype, kind, training)).encode()))
    base = [torch.randn(*shape, generator=g), torch.randn(C, 1, 3, 3, generator=g) * 0.3,
            torch.rand(C, generator=g) + 0.5, torch.randn(C, generator=g) * 0.1]
    (x, w, gamma, beta), (xr, wr, gamma_ref, beta_ref) = twins([t.double() for t in base], dtype,
                                                               DEVICE, kind)
    rm = (torch.randn(C, generator=g) * 0.1).to(DEVICE, dtype)
    rv = (torch.rand(C, generator=g) + 0.5).to(DEVICE, dtype)
    bn = BatchNormState(gamma, beta, rm.clone(), rv.clone())
    bn_ref = BatchNormState(gamma_ref, beta_ref, rm.double(), rv.double())

    if stride == 1:
        y, avg, mx = hdkd.ops.dwconv_bn_gelu(x, w, bn, training, 0.1, 1e-5, backend="triton")
    else:  # the strided form, used by expansion-1 downsampling blocks
        y, avg, mx = dwconv_bn_gelu(x, w, bn, training, 0.1, 1e-5, stride=stride)
    ry, ravg, _ = reference.dwconv_bn_gelu(xr, wr, bn_ref, training, 0.1, 1e-5, stride=stride)
    rmx = reference_max(ry, y, mx)
    tol = REL_TOL[dtype]
    for name, a, b in (("y", y, ry), ("avg", avg, ravg), ("max", mx, rmx)):
        assert a.dtype == dtype and a.shape == b.shape, name
        assert rel_err(a, b) < tol, name
    for name, a, b in (("running_mean", bn.running_mean, bn_ref.running_mean),
                       ("running_var", bn.running_var, bn_ref.running_var)):
        assert rel_err(a, b) < tol, name

    gg = torch.Generator().manual_seed(7)
    gy, ga, gm = (torch.randn(t.shape, generator=gg).to(DEVICE, dtype) for t in (ry, ravg, rmx))
    ((y * layout(gy, kind)).sum() + (avg * ga).sum() + (mx * gm).sum()).float().backward()
    ((ry * gy.double()).sum() + (ravg * ga.double()).sum() + (rmx * gm.double()).sum()).backward()
    for name, a, b in (("x", x, xr), ("weight", w, wr), ("bn.weight", bn.weight, bn_ref.weight),
                       ("bn.bias", bn.bias, bn_ref.bias)):
        assert a.grad.dtype == dtype, name
        assert rel_err(a.grad, b.grad) < tol, name


@pytest.mark.parametrize("shape,dtype,kind,training,stride", STRIDE_2)
def test_strided_form(shape, dtype, kind, training, stride):
    _check(shape, dtype, kind, training, stride)


@cuda_only
@pytest.mark.parametrize("shape,dtype,kind,training,stride", REALISTIC)
def test_forward_backward_realistic(shape, dtype, kind, training, stride):
    _check(shape, dtype, kind, training, stride)


def test_training_refuses_a_single_value_per_channel():
    x = torch.randn(1, 4, 1, 1, device=DEVICE)
    bn = BatchNormState(*(torch.ones(4, device=DEVICE) for _ in range(4)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        hdkd.ops.dwconv_bn_gelu(x, torch.randn(4, 1, 3, 3, device=DEVICE), bn, True,
                                backend="triton")
