"""Triton depthwise conv + BN + GELU (+ per-channel avg / max) against the float64 reference:
train (batch statistics, running-statistics update) and eval, forward and backward."""
import zlib

import pytest
import torch

from triton_env import (DEVICE, batch_norm_leaves, cuda_only, leaf, no_tf32,  # noqa: F401
                        requires_triton)
from helpers import REL_TOL, layout, rel_err

import hdkd
from hdkd.ops import reference, triton_backend
from hdkd.ops.reference import BatchNormState
from max_ties import check_dwconv_nan, check_dwconv_ties, reference_max

pytestmark = [requires_triton, pytest.mark.usefixtures("no_tf32")]

SMALL = [((1, 5, 3, 5), torch.float32, "contiguous", True, 1),
         ((2, 20, 7, 6), torch.float32, "channels_last", False, 1),
         ((2, 12, 9, 9), torch.float32, "strided", True, 1),
         ((2, 12, 9, 8), torch.float32, "channels_last", True, 2),
         ((2, 20, 7, 6), torch.bfloat16, "channels_last", True, 1),
         ((1, 12, 9, 9), torch.bfloat16, "contiguous", False, 2),
         ((2, 12, 7, 6), torch.float16, "strided", True, 1)]
REALISTIC = [((8, 384, 56, 56), torch.bfloat16, "channels_last", True, 1),
             ((8, 384, 56, 56), torch.bfloat16, "channels_last", False, 1),
             ((4, 64, 112, 112), torch.float32, "contiguous", True, 2),
             ((3, 200, 13, 17), torch.float16, "strided", True, 1)]


def _check(shape, dtype, kind, training, stride):
    B, C, H, W = shape
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype, kind, training)).encode()))
    x, xr = leaf(torch.randn(*shape, generator=g).to(DEVICE), dtype, kind)
    w, wr = leaf((torch.randn(C, 1, 3, 3, generator=g) * 0.3).to(DEVICE), dtype)
    bn, bn_ref = batch_norm_leaves(C, dtype, g)

    if stride == 1:
        y, avg, mx = hdkd.ops.dwconv_bn_gelu(x, w, bn, training, 0.1, 1e-5, backend="triton")
    else:  # the strided form, used by expansion-1 downsampling blocks
        y, avg, mx = triton_backend.dwconv_bn_gelu(x, w, bn, training, 0.1, 1e-5, stride=stride)
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


@pytest.mark.parametrize("shape,dtype,kind,training,stride", SMALL)
def test_forward_backward_small(shape, dtype, kind, training, stride):
    _check(shape, dtype, kind, training, stride)


@cuda_only
@pytest.mark.parametrize("shape,dtype,kind,training,stride", REALISTIC)
def test_forward_backward_realistic(shape, dtype, kind, training, stride):
    _check(shape, dtype, kind, training, stride)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_ties_split_the_gradient_like_amax(dtype, training):
    check_dwconv_ties(lambda x, w, bn, tr, eps: hdkd.ops.dwconv_bn_gelu(x, w, bn, tr, 0.1, eps,
                                                                         backend="triton"),
                      dtype, DEVICE, training)


def test_max_propagates_nan():
    check_dwconv_nan(lambda x, w, bn, tr, eps: hdkd.ops.dwconv_bn_gelu(x, w, bn, tr, 0.1, eps,
                                                                        backend="triton"), DEVICE)


def test_training_refuses_a_single_value_per_channel():
    x = torch.randn(1, 4, 1, 1, device=DEVICE)
    bn = BatchNormState(*(torch.ones(4, device=DEVICE) for _ in range(4)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        hdkd.ops.dwconv_bn_gelu(x, torch.randn(4, 1, 3, 3, device=DEVICE), bn, True,
                                backend="triton")
