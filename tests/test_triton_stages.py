"""The Triton training-path stages of MBCSA against the float64 reference, forward and backward:
expand (1x1 conv + BN + GELU from the input's statistics) and attention + project conv."""
import zlib

import pytest
import torch
import torch.nn.functional as F

from triton_env import DEVICE, no_tf32, requires_triton  # noqa: F401
from helpers import REL_TOL, layout, rel_err, twins

from hdkd.ops import reference
from hdkd.ops.triton.channel_spatial_attention_project import channel_spatial_attention_project
from hdkd.ops.triton.expand_bn_gelu import expand_bn_gelu
from hdkd.ops.reference import BatchNormState

pytestmark = [requires_triton, pytest.mark.usefixtures("no_tf32")]


def _gen(*key):
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


@pytest.mark.parametrize("shape,hidden,dtype,kind,training,stride", [
    ((2, 5, 7, 6), 20, torch.float32, "contiguous", True, 1),
    ((1, 6, 9, 9), 24, torch.float32, "channels_last", True, 2),
    ((2, 5, 7, 6), 20, torch.float32, "strided", False, 1),
    ((2, 6, 9, 8), 24, torch.bfloat16, "channels_last", True, 2),
    ((2, 5, 7, 6), 20, torch.float16, "contiguous", False, 2)])
def test_expand_bn_gelu(shape, hidden, dtype, kind, training, stride):
    g = _gen(shape, hidden, dtype, kind, training, stride)
    cin = shape[1]
    base = [torch.randn(*shape, generator=g) + 0.3,
            torch.randn(hidden, cin, 1, 1, generator=g) * 0.4,
            torch.rand(hidden, generator=g) + 0.5, torch.randn(hidden, generator=g) * 0.1]
    (z, w, gamma, beta), (zr, wr, gamma_ref, beta_ref) = twins([t.double() for t in base], dtype,
                                                               DEVICE, kind)
    rm = (torch.randn(hidden, generator=g) * 0.1).to(DEVICE, dtype)
    rv = (torch.rand(hidden, generator=g) + 0.5).to(DEVICE, dtype)
    bn = BatchNormState(gamma, beta, rm.clone(), rv.clone())
    bn_ref = BatchNormState(gamma_ref, beta_ref, rm.double(), rv.double())

    e = expand_bn_gelu(z, w, bn, training, 0.1, 1e-5, stride)
    er = F.gelu(reference.batch_norm(F.conv2d(zr, wr, stride=stride), bn_ref, training))
    tol = REL_TOL[dtype]
    assert e.dtype == dtype and e.shape == er.shape
    assert rel_err(e, er) < tol
    assert rel_err(bn.running_mean, bn_ref.running_mean) < tol
    assert rel_err(bn.running_var, bn_ref.running_var) < tol
    ge = torch.randn(er.shape, generator=g).to(DEVICE, dtype)
    e.backward(ge)
    er.backward(ge.double())
    for name, a, b in (("z", z, zr), ("weight", w, wr), ("gamma", bn.weight, bn_ref.weight),
                       ("beta", bn.bias, bn_ref.bias)):
        assert a.grad.dtype == dtype, name
        assert rel_err(a.grad, b.grad) < tol, name


@pytest.mark.parametrize("shape,cout,dtype,kind", [
    ((2, 20, 7, 6), 5, torch.float32, "channels_last"),
    ((1, 12, 9, 9), 7, torch.float32, "strided"),
    ((2, 20, 7, 6), 5, torch.bfloat16, "contiguous"),
    ((2, 6, 5, 4), 3, torch.float32, "ties")])
def test_attention_project(shape, cout, dtype, kind):
    g = _gen(shape, cout, dtype, kind)
    C = shape[1]
    r = max(C // 16, 1)
    if kind == "ties":  # integer values: several pixels at each channel's max
        kind = "contiguous"
        d0 = torch.randint(-2, 3, shape, generator=g).float()
    else:
        d0 = torch.randn(*shape, generator=g)
    weights = [torch.randn(*size, generator=g) * scale for size, scale in (
        ((r, C, 1, 1), 0.5), ((C, r, 1, 1), 0.5), ((1, 2, 7, 7), 0.2), ((cout, C, 1, 1), 0.3))]
    fast, ref = twins([t.double() for t in (d0, *weights)], dtype, DEVICE, kind)
    d = fast[0]
    mx = d.float().amax((2, 3))  # the depthwise pass's statistics, differentiable here
    ties = (d.float() == mx[:, :, None, None]).sum((2, 3)).float()
    v = channel_spatial_attention_project(d, d.float().mean((2, 3)), mx, ties, *fast[1:])
    vr = F.conv2d(reference.channel_spatial_attention(*ref[:4]), ref[4])
    assert v.dtype == dtype and rel_err(v, vr) < REL_TOL[dtype]
    gv = torch.randn(vr.shape, generator=g).to(DEVICE, dtype)
    v.backward(layout(gv, kind))
    vr.backward(gv.double())
    for name, a, b in zip(("d", "fc1", "fc2", "sa", "project"), fast, ref):
        assert rel_err(a.grad, b.grad) < REL_TOL[dtype], name
