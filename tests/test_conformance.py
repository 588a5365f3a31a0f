"""Every registered backend (tests/conformance_cases.py:BACKENDS) held to the same cases: each
registry op forward and backward against the float64 reference (docs/architecture.md, section 4:
the dtype's relative tolerance, outputs' dtype, shape and memory format, a gradient for every
input, maxima tied and NaN as torch.amax), the backend's custom ops through
torch.library.opcheck, and the ops compiled by inductor."""
from __future__ import annotations

import contextlib

import pytest
import torch

import hdkd
from conformance_cases import (BACKEND_PARAMS, BLOCKS, GRID, Block, Shape, alternating_training,
                               attention_inputs, dwconv_inputs, with_dtypes_and_layouts)
from helpers import REL_TOL, layout, reference_max, rel_err, twins
from hdkd.ops import reference as R
from triton_env import no_tf32  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("no_tf32")


def float32_nan_only(params):
    """NaN propagation does not depend on the dtype's rounding: the NaN entry in float32 only
    (the depthwise op keeps all three, for its NaN case in eval and in training)."""
    return [p for p in params if p.values[0].values != "nan" or p.values[1] == torch.float32]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request, monkeypatch):
    under_test = request.param
    reason = under_test.unavailable()
    if reason is not None:
        pytest.skip(reason)
    dtype = request.node.callspec.params.get("dtype", torch.float32)
    if dtype not in under_test.dtypes:
        pytest.skip(f"{under_test.name} is not held to {dtype}")
    if under_test.namespace is not None:
        monkeypatch.setattr(torch.ops, "hdkd", under_test.namespace())
    return under_test


def assert_matches(out, ref, dtype, what):
    """out has dtype and ref's shape, NaN exactly where ref has, and elsewhere a relative error
    below the dtype's tolerance."""
    assert out.dtype == dtype and out.shape == ref.shape, f"{what}: {out.dtype} {out.shape}"
    nan = ref.detach().cpu().isnan()
    got = out.detach().cpu()
    assert torch.equal(got.isnan(), nan), f"{what}: NaN where the reference has none, or not"
    err = rel_err(got[~nan], ref.detach().cpu()[~nan])
    assert err < REL_TOL[dtype], f"{what}: relative error {err:.2e} >= {REL_TOL[dtype]:.0e}"


def backward_both(outs, refs, dtype, kind):
    """The same random cotangents (values of dtype; in layout `kind` for activations) through
    the outputs under test and through the reference's."""
    g = torch.Generator().manual_seed(3)
    cots = [torch.randn(r.shape, generator=g, dtype=torch.float64).to(dtype) for r in refs]
    torch.autograd.backward(outs, [layout(c, kind).to(o.device) if c.dim() == 4
                                   else c.to(o.device) for o, c in zip(outs, cots)])
    torch.autograd.backward(refs, [c.double().to(r.device) for r, c in zip(refs, cots)])


def assert_grads(ours, refs, dtype, names):
    for name, a, b in zip(names, ours, refs):
        assert a.grad is not None, f"no gradient for {name}"
        assert a.grad.dtype == a.dtype and a.grad.shape == a.shape, name
        assert_matches(a.grad, b.grad, dtype, f"gradient of {name}")


def assert_channels_last(out, kind):
    if kind == "channels_last" and out.shape[1] > 1 and out.shape[2] * out.shape[3] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape,dtype,kind", float32_nan_only(with_dtypes_and_layouts(GRID)))
def test_channel_spatial_attention(backend, shape: Shape, dtype, kind):
    ours, refs = twins(attention_inputs(shape), dtype, backend.device, kind)
    out = hdkd.ops.channel_spatial_attention(*ours, backend=backend.registry)
    ref = R.channel_spatial_attention(*refs)
    assert out.device.type == torch.device(backend.device).type
    assert_matches(out, ref, dtype, "out")
    assert_channels_last(out, kind)
    h = refs[0]
    if shape.values == "ties":
        assert (h == h.amax((2, 3), keepdim=True)).sum((2, 3)).max() > 1, "no tied channel max"
    if shape.values == "nan":
        return
    backward_both([out], [ref], dtype, kind)
    assert_grads(ours, refs, dtype, ("h", "fc1", "fc2", "sa_weight"))


def _dwconv_twins(shape, dtype, device, kind):
    base = dwconv_inputs(shape)
    ours, refs = twins(base[:4], dtype, device, kind)
    stats = [s.to(dtype).to(device) for s in base[4:]]
    bn = R.BatchNormState(ours[2], ours[3], *[s.clone() for s in stats])
    bn_ref = R.BatchNormState(refs[2], refs[3], *[s.double() for s in stats])
    return ours, refs, bn, bn_ref


@pytest.mark.parametrize("shape,dtype,kind,training",
                         alternating_training(with_dtypes_and_layouts(GRID)))
def test_dwconv_bn_gelu(backend, shape: Shape, dtype, kind, training):
    """In training (batch statistics, running statistics) or eval (BN folded)."""
    ours, refs, bn, bn_ref = _dwconv_twins(shape, dtype, backend.device, kind)
    y, avg, mx = hdkd.ops.dwconv_bn_gelu(ours[0], ours[1], bn, training, 0.1, 1e-5,
                                         backend=backend.registry)
    yr, avgr, _ = R.dwconv_bn_gelu(refs[0], refs[1], bn_ref, training, 0.1, 1e-5)
    mxr = reference_max(yr, y, mx)
    for name, a, b in (("y", y, yr), ("avg", avg, avgr), ("max", mx, mxr),
                       ("running_mean", bn.running_mean, bn_ref.running_mean),
                       ("running_var", bn.running_var, bn_ref.running_var)):
        assert_matches(a, b, dtype, name)
    assert_channels_last(y, kind)
    if shape.values == "ties":
        b, c, h, w = shape.size
        tied = y.detach() == mx.detach()[:, :, None, None]
        assert torch.equal(tied.sum((2, 3)).cpu(),
                           torch.full((b, c), (h - shape.k + 1) * (w - shape.k + 1))), \
            "the interior pixels should be tied at each channel's max"
    if shape.values == "nan":
        return
    backward_both([y, avg, mx], [yr, avgr, mxr], dtype, kind)
    assert_grads(ours, refs, dtype, ("x", "weight", "bn.weight", "bn.bias"))


def test_dwconv_bn_gelu_gradient_of_y_alone(backend):
    """Only y used (avg and max without gradient): the backward's undefined-gradient path."""
    ours, refs, bn, bn_ref = _dwconv_twins(Shape("y_only", (2, 11, 5, 7)), torch.float32,
                                           backend.device, "contiguous")
    y = hdkd.ops.dwconv_bn_gelu(ours[0], ours[1], bn, True, backend=backend.registry)[0]
    yr = R.dwconv_bn_gelu(refs[0], refs[1], bn_ref, True)[0]
    backward_both([y], [yr], torch.float32, "contiguous")
    assert_grads(ours, refs, torch.float32, ("x", "weight", "bn.weight", "bn.bias"))


def _blocks(block: Block, registry: str, dtype, device):
    """(the block on `registry` in dtype, its float64 torch twin with the same values)."""
    torch.manual_seed(sum(block.size))
    cin = block.size[1]
    make = lambda name: hdkd.nn.MBCSA(cin, block.cout, downsample=block.downsample,  # noqa
                                      expansion=block.expansion, backend=name)
    ours = make(registry)
    with torch.no_grad():  # non-trivial running statistics and affines
        for bn in ours.batch_norms():
            bn.running_mean.normal_(0, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.1)
    ours = ours.to(device, dtype)
    ref = make("torch")
    ref.load_state_dict(ours.state_dict())
    return ours, ref.to(device, torch.float64)


def _block_input(block: Block, dtype, device, kind):
    x = torch.randn(block.size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return twins([x], dtype, device, kind)


@pytest.mark.parametrize("block,dtype,kind", with_dtypes_and_layouts(BLOCKS))
def test_mbcsa_eval_without_grad(backend, block: Block, dtype, kind):
    """The fused eval kernels (expansion > 1) or the eval path without a graph."""
    ours, ref = _blocks(block, backend.registry, dtype, backend.device)
    (x,), (xr,) = _block_input(block, dtype, backend.device, kind)
    with torch.no_grad():
        out, expect = ours.eval()(x), ref.eval()(xr)
    assert_matches(out, expect, dtype, "out")
    assert_channels_last(out, kind)


def _block_errors(registry, block, dtype, device, kind, training):
    """Relative errors of one block's run against the float64 reference: (output, input gradient
    and each parameter gradient; each floating buffer). Int buffers must be equal."""
    ours, ref = _blocks(block, registry, dtype, device)
    ours.train(training), ref.train(training)
    (x,), (xr,) = _block_input(block, dtype, device, kind)
    out, expect = ours(x), ref(xr)
    assert out.dtype == dtype and out.shape == expect.shape
    backward_both([out], [expect], dtype, kind)
    errors = {"out": rel_err(out, expect), "x.grad": rel_err(x.grad, xr.grad)}
    ref_grads = dict(ref.named_parameters())
    # Some gradients are zero in exact arithmetic (the pre-norm's, when a training BN follows
    # the 1x1 conv): each is measured against 1% of the block's overall gradient scale.
    floor = 1e-2 * torch.stack([p.grad.norm() for p in ref.parameters()]).norm().item()
    for name, p in ours.named_parameters():
        want = ref_grads[name].grad
        errors[name] = float((p.grad.double() - want).norm() / max(want.norm().item(), floor))
    ref_buffers = dict(ref.named_buffers())
    buffer_errors = {}
    for name, b in ours.named_buffers():
        if b.is_floating_point():
            buffer_errors[name] = rel_err(b, ref_buffers[name])
        else:
            assert torch.equal(b.cpu(), ref_buffers[name].cpu()), name
    return errors, buffer_errors


@pytest.mark.parametrize("block,dtype,kind,training", alternating_training(
    [p for p in with_dtypes_and_layouts(BLOCKS) if p.values[1] == torch.float32]))
def test_mbcsa_with_grad(backend, block: Block, dtype, kind, training):
    """The differentiable block, in training (batch statistics, running statistics) or eval, in
    float32: a whole block in half precision drifts past the dtype's bound in some parameter
    gradients in eager PyTorch too (each op alone is held to it in every dtype, above)."""
    errors, buffer_errors = _block_errors(backend.registry, block, dtype, backend.device, kind,
                                          training)
    bad = {k: e for k, e in errors.items() if not e < REL_TOL[dtype]}
    # the running statistics: one BN update of statistics computed in float32
    bad.update({k: e for k, e in buffer_errors.items() if not e < 1e-5})
    assert not bad, f"relative errors above bound: {bad}"


def _autocast(kind: str, device: str):
    if kind == "no_autocast":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, torch.bfloat16)


# autocast changes dtypes, not layouts: it runs with the channels_last inputs only
@pytest.mark.parametrize("kind,autocast", [("contiguous", "no_autocast"),
                                           ("channels_last", "no_autocast"),
                                           ("channels_last", "autocast_bf16")])
def test_custom_ops_pass_opcheck(backend, kind, autocast):
    """Schema, fake kernel against the real outputs' shapes, dtypes and strides, autograd
    registration and AOT dispatch of each of the backend's custom ops (torch.library.opcheck),
    whatever the layout of the inputs and whatever autocast is around them. Forward ops take
    gradients for their differentiable inputs; backward and inference-only ops are checked
    without autograd."""
    if backend.custom_ops is None:
        pytest.skip(f"{backend.name} has no custom ops")
    for name, op, args in backend.custom_ops(kind):
        grads = _GRAD_INPUTS.get(name.split("[")[0], ())
        args = tuple(a.detach().requires_grad_() if i in grads else a
                     for i, a in enumerate(args))
        utils = _UTILS.get((backend.registry, name), torch.library._OPCHECK_DEFAULT_UTILS)
        with _autocast(autocast, backend.device):
            torch.library.opcheck(op, args, test_utils=utils)


# The inputs of each differentiable forward op that carry gradients (not the running
# statistics, flags or tie counts); backward ops are checked without gradients.
_GRAD_INPUTS = {name: range(4) for name in (
    "channel_spatial_attention_forward", "dwconv_bn_gelu_forward", "expand_bn_gelu_forward",
    "dwconv_bn_gelu_eval", "dwconv_bn_gelu_train")}
_GRAD_INPUTS["channel_spatial_attention_project_forward"] = (0, 1, 2, 4, 5, 6, 7)
# inference-only ops, by (registry backend, op): no autograd registration to check
_UTILS = {("triton", "mbcsa_eval"): ("test_schema", "test_faketensor"),
          ("ext", "mbcsa_eval"): ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")}


@pytest.fixture
def fresh_inductor():
    """Compile from scratch: inductor's on-disk caches can hand back a graph compiled against an
    earlier version of a fake kernel, which hides exactly the defects this test is for."""
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True):
        yield
    torch._dynamo.reset()


def _depthwise_then_attention(x, w, gamma, beta, fc1, fc2, sa, backend):
    bn = R.BatchNormState(gamma, beta, torch.zeros_like(gamma), torch.ones_like(gamma))
    y, avg, mx = hdkd.ops.dwconv_bn_gelu(x, w, bn, True, backend=backend)
    out = hdkd.ops.channel_spatial_attention(y, fc1, fc2, sa, backend=backend)
    return out, y, avg, mx


def test_ops_compiled_by_inductor(backend, fresh_inductor):
    """Both ops in one graph compiled by inductor with fullgraph=True (the fakes and registered
    autograd let dynamo trace them), forward and backward against the float64 reference."""
    shape = Shape("compiled", (2, 19, 7, 5))
    base = dwconv_inputs(shape)[:4] + attention_inputs(shape)[1:]
    ours, refs = twins(base, torch.float32, backend.device, "channels_last")
    compiled = torch.compile(_depthwise_then_attention, backend="inductor", fullgraph=True)
    outs = compiled(*ours, backend=backend.registry)
    expected = _depthwise_then_attention(*refs, backend="torch")
    expected = (*expected[:3], reference_max(expected[1], outs[1], outs[3]))
    for name, a, b in zip(("out", "y", "avg", "max"), outs, expected):
        assert_matches(a, b, torch.float32, name)
    backward_both(list(outs), list(expected), torch.float32, "channels_last")
    assert_grads(ours, refs, torch.float32, ("x", "weight", "bn.weight", "bn.bias", "fc1", "fc2",
                                              "sa_weight"))
