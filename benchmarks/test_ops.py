"""The fused ops alone: channel-spatial attention (forward; forward+backward) and depthwise conv +
BN + GELU (eval forward; training forward+backward), on each block's hidden activation."""
from __future__ import annotations

from functools import partial

import pytest
import torch

import hdkd.ops as ops
from hdkd import flops
from hdkd.ops import reference
from hdkd.ops.reference import BatchNormState

import cases, floors
from harness import DEVICE, Workload, run


def _params(op: str):
    out = []
    for i, (c, hw) in enumerate(cases.hidden_shapes()):
        for dtype in cases.DTYPES:
            for impl in cases.impls("ops", (op,), i == 0):
                out.append(pytest.param(c, hw, dtype, impl, id=f"c{c}@{hw}-{dtype}-{impl}"))
    return out


def _attention_inputs(c, hw, dtype, grad, n_sets=2):
    dt = cases.torch_dtype(dtype)
    r = max(c // 16, 1)

    def t(*shape, scale=1.0):
        return (torch.randn(*shape, device=DEVICE) * scale).to(dt).requires_grad_(grad)

    weights = (t(r, c, 1, 1, scale=c ** -0.5), t(c, r, 1, 1, scale=r ** -0.5),
               t(1, 2, 7, 7, scale=0.1))
    sets = []
    for _ in range(n_sets):
        h = torch.randn(cases.batch(), c, hw, hw, device=DEVICE, dtype=dt)
        h = h.contiguous(memory_format=torch.channels_last).requires_grad_(grad)
        sets.append((h, *weights, torch.randn_like(h) if grad else None))
    return sets


def _op(name: str, impl: str):
    """hdkd.ops.<name> as impl runs it: torch.compile of the reference composition, or the op on
    impl's backend."""
    if impl == "compile":
        return torch.compile(getattr(reference, name))
    return partial(getattr(ops, name), backend=cases.backend_of(impl))


def _attention_fn(impl, backward):
    fwd = _op("channel_spatial_attention", impl)
    if not backward:
        def call(h, fc1, fc2, sa, _):
            with torch.no_grad():
                return fwd(h, fc1, fc2, sa)
        return call

    def step(h, fc1, fc2, sa, g):
        fwd(h, fc1, fc2, sa).backward(g)
    return step


def _attention_flops(c, hw, impl):
    """Forward FLOPs at the benchmark's batch, counted through impl's op at batch 1."""
    h, fc1, fc2, sa, _ = _attention_inputs(c, hw, "float32", grad=False, n_sets=1)[0]
    backend = cases.backend_of(impl)
    fn = lambda *a: ops.channel_spatial_attention(*a, backend=backend)  # noqa: E731
    return cases.batch() * flops.count_flops(fn, (h[:1], fc1, fc2, sa))


def _attention_workload(c, hw, dtype, backward, fl):
    b = cases.batch()
    n = b * c * hw * hw
    nbytes, rule = floors.attention_bytes(n, torch.finfo(cases.torch_dtype(dtype)).bits // 8,
                                          backward)
    return Workload("ops", f"channel_spatial_attention{' fwd+bwd' if backward else ''} "
                    f"c{c}@{hw}", dtype, b, fl,
                    "fvcore forward" + (" x 3 (forward + backward)" if backward else ""),
                    nbytes, rule, extra=cases.compile_note("ops"))


@pytest.mark.parametrize("c,hw,dtype,impl", _params("channel_spatial_attention"))
def test_channel_spatial_attention(benchmark, session, c, hw, dtype, impl):
    sets = _attention_inputs(c, hw, dtype, grad=False)
    fl = _attention_flops(c, hw, impl)
    run(benchmark, session, _attention_workload(c, hw, dtype, False, fl), impl,
        _attention_fn(impl, False), sets)


@pytest.mark.parametrize("c,hw,dtype,impl", _params("channel_spatial_attention"))
def test_channel_spatial_attention_backward(benchmark, session, c, hw, dtype, impl):
    sets = _attention_inputs(c, hw, dtype, grad=True)
    fl = 3 * _attention_flops(c, hw, impl)
    run(benchmark, session, _attention_workload(c, hw, dtype, True, fl), impl,
        _attention_fn(impl, True), sets)


def _bn(c, dt):
    return BatchNormState(torch.rand(c, device=DEVICE).add_(0.5).to(dt).requires_grad_(),
                          torch.randn(c, device=DEVICE).to(dt).requires_grad_(),
                          torch.randn(c, device=DEVICE).mul_(0.1).to(dt),
                          torch.rand(c, device=DEVICE).add_(0.5).to(dt))


def _dwconv_inputs(c, hw, dtype, training, n_sets=2):
    dt = cases.torch_dtype(dtype)
    w = (torch.randn(c, 1, 3, 3, device=DEVICE) / 3).to(dt).requires_grad_(training)
    bn = _bn(c, dt)
    sets = []
    for _ in range(n_sets):
        x = torch.randn(cases.batch(), c, hw, hw, device=DEVICE, dtype=dt)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_(training)
        sets.append((x, w, bn, torch.randn_like(x) if training else None))
    return sets


def _dwconv_fn(impl, training):
    fwd = _op("dwconv_bn_gelu", impl)
    if not training:
        def call(x, w, bn, _):
            with torch.no_grad():
                return fwd(x, w, bn, False)
        return call

    def step(x, w, bn, g):
        y, avg, mx = fwd(x, w, bn, True)
        # the attention consumes avg and max too: their gradients flow back into x
        torch.autograd.backward([y, avg, mx], [g, torch.ones_like(avg), torch.ones_like(mx)])
    return step


@pytest.mark.parametrize("training", [False, True], ids=["eval_fwd", "train_fwd+bwd"])
@pytest.mark.parametrize("c,hw,dtype,impl", _params("dwconv_bn_gelu"))
def test_dwconv_bn_gelu(benchmark, session, c, hw, dtype, impl, training):
    sets = _dwconv_inputs(c, hw, dtype, training)
    x, w, bn, _ = _dwconv_inputs(c, hw, "float32", False, n_sets=1)[0]
    bn = BatchNormState(*(t.detach() for t in bn))  # tracing takes no grad-requiring constants

    backend = cases.backend_of(impl)
    fn = lambda x, w: ops.dwconv_bn_gelu(x, w, bn, training, backend=backend)[0]  # noqa: E731
    fl = (3 if training else 1) * cases.batch() * flops.count_flops(fn, (x[:1], w))

    b = cases.batch()
    n = b * c * hw * hw
    nbytes, rule = floors.dwconv_bytes(n, n, torch.finfo(sets[0][0].dtype).bits // 8, training)
    name = f"dwconv_bn_gelu {'train fwd+bwd' if training else 'eval fwd'} c{c}@{hw}"
    wl = Workload("ops", name, dtype, b, fl,
                  "fvcore forward" + (" x 3 (forward + backward)" if training else ""),
                  nbytes, rule, extra=cases.compile_note("ops"))
    run(benchmark, session, wl, impl, _dwconv_fn(impl, training), sets)
