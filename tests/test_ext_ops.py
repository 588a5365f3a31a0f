"""The extension's CPU kernels against the float64 reference: forward and backward, odd shapes,
contiguous / channels_last / strided inputs, float32 and bfloat16, train and eval."""
from __future__ import annotations

import pytest
import torch

import hdkd
from hdkd.ops import reference as R
from ext_env import requires_ext
from helpers import REL_TOL, layout, rel_err
from max_ties import check_attention_ties, check_dwconv_nan, check_dwconv_ties, reference_max

pytestmark = requires_ext

SHAPES = [(1, 19, 7, 5), (2, 37, 9, 11), (3, 8, 1, 6)]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def _quantized(tensors, dtype):
    """float64 copies of the values a `dtype` tensor can hold: the reference then sees the same
    inputs as the kernel, so the comparison measures the kernel, not the input rounding."""
    return [t.to(dtype).double() for t in tensors]


def _leaves(tensors, dtype, kind=None):
    out = []
    for i, t in enumerate(tensors):
        t = t.to(dtype)
        if i == 0 and kind is not None:
            t = layout(t, kind)
        out.append(t.detach().requires_grad_())
    return out


def _check_grads(ours, refs, dtype, what):
    for i, (a, b) in enumerate(zip(ours, refs)):
        assert a.grad is not None, f"{what}: no gradient for input {i}"
        err = rel_err(a.grad, b.grad)
        assert err < REL_TOL[dtype] * 2, f"{what}: input {i} gradient rel. error {err:.2e}"


def _attention_inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    r = max(c // 16, 1)
    return [torch.randn(shape, generator=g, dtype=torch.float64),
            torch.randn(r, c, 1, 1, generator=g, dtype=torch.float64) * 0.3,
            torch.randn(c, r, 1, 1, generator=g, dtype=torch.float64) * 0.3,
            torch.randn(1, 2, 7, 7, generator=g, dtype=torch.float64) * 0.3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_attention_matches_reference(shape, kind, dtype):
    base = _quantized(_attention_inputs(shape, seed=sum(shape)), dtype)
    ours, refs = _leaves(base, dtype, kind), _leaves(base, torch.float64)
    out = hdkd.ops.channel_spatial_attention(*ours, backend="ext")
    ref = R.channel_spatial_attention(*refs)
    assert out.dtype == dtype and out.shape == ref.shape
    if kind == "channels_last" and shape[2] * shape[3] > 1 and shape[1] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(out, ref) < REL_TOL[dtype]
    grad = torch.randn_like(ref).to(dtype).double()
    out.backward(grad.to(dtype))
    ref.backward(grad)
    _check_grads(ours, refs, dtype, f"attention {shape} {kind} {dtype}")


def _bn(c, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(c, generator=g, dtype=torch.float64) + 0.5,
            torch.randn(c, generator=g, dtype=torch.float64) * 0.1,
            torch.randn(c, generator=g, dtype=torch.float64) * 0.1,
            torch.rand(c, generator=g, dtype=torch.float64) + 0.5]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("shape,k", [((1, 19, 7, 5), 3), ((2, 37, 9, 11), 3), ((2, 10, 6, 4), 5)])
def test_dwconv_bn_gelu_matches_reference(shape, k, kind, dtype, training):
    g = torch.Generator().manual_seed(shape[1] + k)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    w = torch.randn(shape[1], 1, k, k, generator=g, dtype=torch.float64) * 0.4
    x, w, gamma, beta, rm, rv = _quantized([x, w, *_bn(shape[1], seed=k, dtype=dtype)], dtype)
    ours = _leaves([x, w, gamma, beta], dtype, kind)
    refs = _leaves([x, w, gamma, beta], torch.float64)
    bn_ours = R.BatchNormState(ours[2], ours[3], rm.to(dtype), rv.to(dtype))
    bn_ref = R.BatchNormState(refs[2], refs[3], rm.clone(), rv.clone())
    y, avg, mx = hdkd.ops.dwconv_bn_gelu(ours[0], ours[1], bn_ours, training, 0.1, 1e-5,
                                         backend="ext")
    yr, avgr, _ = R.dwconv_bn_gelu(refs[0], refs[1], bn_ref, training, 0.1, 1e-5)
    mxr = reference_max(yr, y, mx)
    for a, b, name in ((y, yr, "y"), (avg, avgr, "avg"), (mx, mxr, "max")):
        assert a.dtype == dtype and a.shape == b.shape, name
        assert rel_err(a, b) < REL_TOL[dtype], f"{name}: rel. error {rel_err(a, b):.2e}"
    for a, b in ((bn_ours.running_mean, bn_ref.running_mean),
                 (bn_ours.running_var, bn_ref.running_var)):
        assert rel_err(a, b) < REL_TOL[dtype]
    gy, ga, gm = _quantized([torch.randn_like(yr), torch.randn_like(avgr),
                             torch.randn_like(mxr)], dtype)
    ((y * gy.to(dtype)).sum() + (avg * ga.to(dtype)).sum() + (mx * gm.to(dtype)).sum()).backward()
    ((yr * gy).sum() + (avgr * ga).sum() + (mxr * gm).sum()).backward()
    _check_grads(ours, refs, dtype, f"dwconv {shape} k{k} {kind} {dtype} train={training}")


def test_dwconv_gradient_of_y_alone():
    """Only y used (avg/max without gradient): the undefined-grad path of the backward op."""
    x = torch.randn(2, 11, 5, 7, dtype=torch.float64)
    w = torch.randn(11, 1, 3, 3, dtype=torch.float64)
    gamma, beta, rm, rv = _bn(11, seed=3, dtype=torch.float32)
    ours = _leaves([x, w, gamma, beta], torch.float32)
    refs = _leaves([x, w, gamma, beta], torch.float64)
    y = hdkd.ops.dwconv_bn_gelu(ours[0], ours[1], R.BatchNormState(ours[2], ours[3], rm.float(),
                                rv.float()), True, backend="ext")[0]
    yr = R.dwconv_bn_gelu(refs[0], refs[1], R.BatchNormState(refs[2], refs[3], rm, rv), True)[0]
    y.pow(2).sum().backward()
    yr.pow(2).sum().backward()
    _check_grads(ours, refs, torch.float32, "dwconv y only")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_max_ties_split_the_gradient_like_amax(dtype):
    check_attention_ties(lambda *a: hdkd.ops.channel_spatial_attention(*a, backend="ext"),
                         dtype, "cpu", lambda t: layout(t, "channels_last"))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dwconv_max_ties_split_the_gradient_like_amax(dtype, training):
    check_dwconv_ties(lambda x, w, bn, tr, eps: hdkd.ops.dwconv_bn_gelu(x, w, bn, tr, 0.1, eps,
                                                                         backend="ext"),
                      dtype, "cpu", training)


def test_dwconv_max_propagates_nan():
    check_dwconv_nan(lambda x, w, bn, tr, eps: hdkd.ops.dwconv_bn_gelu(x, w, bn, tr, 0.1, eps,
                                                                        backend="ext"), "cpu")


def _blocks(cin, cout, down, seed):
    torch.manual_seed(seed)
    ours = hdkd.nn.MBCSA(cin, cout, downsample=down, backend="ext")
    for bn in ours.batch_norms():
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_(0, 0.1)
    ref = hdkd.nn.MBCSA(cin, cout, downsample=down, backend="torch")
    ref.load_state_dict(ours.state_dict())
    return ours, ref.double()


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("cin,cout,down,hw", [(12, 12, False, (9, 7)), (10, 20, True, (11, 6)),
                                              (16, 16, False, (1, 5))])
def test_mbcsa_eval_fused_matches_reference(cin, cout, down, hw, kind):
    ours, ref = _blocks(cin, cout, down, seed=cin + cout)
    ours.eval(), ref.eval()
    x = torch.randn(2, cin, *hw, dtype=torch.float64)
    with torch.no_grad():
        out = ours(layout(x.float(), kind))
        expected = ref(x)
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert rel_err(out, expected) < 1e-4
    with torch.no_grad():
        out_bf16 = ours.to(torch.bfloat16)(layout(x.to(torch.bfloat16), kind))
    assert out_bf16.dtype == torch.bfloat16 and rel_err(out_bf16, expected) < 1e-2


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("down", [False, True])
def test_mbcsa_module_forward_backward_and_running_stats(down, training):
    cin, cout = (12, 20) if down else (12, 12)
    ours, ref = _blocks(cin, cout, down, seed=7)
    ours.train(training), ref.train(training)
    x = torch.randn(3, cin, 9, 7, dtype=torch.float64)
    xo = layout(x.float(), "channels_last").requires_grad_()
    xr = x.clone().requires_grad_()
    out, expected = ours(xo), ref(xr)
    assert rel_err(out, expected) < 1e-4
    g = torch.randn_like(expected)
    out.backward(g.float())
    expected.backward(g)
    assert rel_err(xo.grad, xr.grad) < 2e-4
    ref_params = dict(ref.named_parameters())
    # In training the pre-norm's gradients are exactly zero in exact arithmetic (a train-mode BN
    # follows the 1x1 conv), so errors are taken relative to the block's overall gradient scale.
    floor = 1e-2 * torch.stack([p.grad.norm() for p in ref.parameters()]).norm().item()
    for name, p in ours.named_parameters():
        want = ref_params[name].grad
        err = (p.grad.double() - want).norm() / max(want.norm().item(), floor)
        assert err < 2e-4, f"{name}: error {err:.2e}"
    ref_buffers = dict(ref.named_buffers())
    for name, b in ours.named_buffers():
        assert rel_err(b, ref_buffers[name]) < 1e-5 or b.dtype == torch.int64, name
        if b.dtype == torch.int64:
            assert torch.equal(b, ref_buffers[name]), name


def test_auto_uses_ext_on_cpu_for_fused_eval():
    picked = hdkd.ops.resolve("mbcsa_eval", torch.device("cpu"), "auto")
    assert picked.name == "ext"


def test_float64_runs_the_reference():
    inputs = _attention_inputs((1, 5, 4, 3), seed=1)
    out = hdkd.ops.channel_spatial_attention(*inputs, backend="ext")
    assert out.dtype == torch.float64
    assert torch.allclose(out, R.channel_spatial_attention(*inputs))


def test_kernel_errors_name_the_argument():
    h, fc1, fc2, sa = [t.float() for t in _attention_inputs((1, 8, 4, 4), seed=2)]
    with pytest.raises(RuntimeError, match="fc2_weight of shape"):
        torch.ops.hdkd.csa_forward(h, fc1, fc2[:4], sa)
    with pytest.raises(RuntimeError, match="weight of shape"):
        torch.ops.hdkd.dwconv_bn_gelu_eval(h, torch.ones(8, 1, 3, 2), torch.ones(8),
                                           torch.zeros(8))
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        torch.ops.hdkd.csa_forward(h.int(), fc1, fc2, sa)


@pytest.mark.parametrize("grad", [False, True], ids=["fused", "composed"])
def test_mbcsa_under_cpu_autocast(grad):
    ours, ref = _blocks(16, 16, False, seed=3)
    ours.eval(), ref.eval()
    x = torch.randn(2, 16, 8, 6)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(x)
    assert rel_err(out, ref(x.double())) < 1e-2


@pytest.mark.parametrize("op", ["attention", "dwconv"])
def test_float16_inputs(op):
    if op == "attention":
        base = _quantized(_attention_inputs((2, 24, 5, 6), seed=5), torch.float16)
        out = hdkd.ops.channel_spatial_attention(*[t.half() for t in base], backend="ext")
        ref = R.channel_spatial_attention(*base)
    else:
        x, w, *bn = _quantized([torch.randn(2, 24, 5, 6), torch.randn(24, 1, 3, 3) * 0.4,
                                *_bn(24, seed=1, dtype=torch.float16)], torch.float16)
        out = hdkd.ops.dwconv_bn_gelu(x.half(), w.half(), R.BatchNormState(*[t.half() for t in bn]),
                                      False, backend="ext")[0]
        ref = R.dwconv_bn_gelu(x, w, R.BatchNormState(*bn), False)[0]
    assert out.dtype == torch.float16 and rel_err(out, ref) < REL_TOL[torch.float16]


def test_large_depthwise_kernel_runs_the_reference():
    torch.manual_seed(0)
    ours = hdkd.nn.MBCSA(8, 8, kernel_size=9, backend="ext").eval()
    ref = hdkd.nn.MBCSA(8, 8, kernel_size=9, backend="torch").eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))
