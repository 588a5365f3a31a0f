"""hdkd.nn modules: equal to the reference functions, BN semantics, layouts, dtypes, errors."""
import copy

import pytest
import torch

import hdkd
from hdkd.nn import (DFLT, MBCSA, ChannelAttention, ChannelSpatialAttention, ConvBNGELU,
                     SpatialAttention)
from hdkd.ops import reference as R

from helpers import assert_close_rel
from original_layout import randomize_batch_norms

CASES = [  # inp, oup, downsample, expansion, (H, W)
    (16, 16, False, 4, (7, 9)), (12, 20, True, 4, (9, 6)), (8, 8, False, 1, (5, 5)),
    (6, 10, True, 1, (7, 4)), (5, 5, False, 4, (1, 1)),
]


def make_block(inp, oup, down, e, seed=0):
    torch.manual_seed(seed)
    m = MBCSA(inp, oup, 3, down, e)
    randomize_batch_norms(m, seed)
    return m


@pytest.mark.parametrize("inp,oup,down,e,hw", CASES)
@pytest.mark.parametrize("training", [True, False])
def test_mbcsa_equals_reference(inp, oup, down, e, hw, training):
    m = make_block(inp, oup, down, e).train(training)
    twin = copy.deepcopy(m)
    x = torch.randn(2, inp, *hw)
    out = m(x)
    ref = R.mbcsa(x, twin.weights(), training)
    torch.testing.assert_close(out, ref)
    for (name, a), b in zip(m.named_buffers(), twin.buffers()):
        if name.endswith("num_batches_tracked"):
            assert int(a) == int(b) + int(training), name
        else:
            torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("training", [True, False])
def test_mbcsa_backward_matches_reference(training):
    m = make_block(12, 20, True, 4).train(training)
    twin = copy.deepcopy(m)
    x = torch.randn(2, 12, 9, 7, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    g = torch.randn(2, 20, 5, 4)
    m(x).backward(g)
    R.mbcsa(x2, twin.weights(), training).backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    for (name, p), q in zip(m.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_mbcsa_cumulative_momentum_like_batch_norm():
    m = make_block(8, 8, False, 4)
    twin = copy.deepcopy(m)
    for bn in m.batch_norms():
        bn.momentum = None
    x = torch.randn(2, 8, 5, 5)
    m(x)
    factor = 1.0 / float(twin.pre_norm.num_batches_tracked + 1)
    R.mbcsa(x, twin.weights(), True, momentum=factor)
    torch.testing.assert_close(m.pre_norm.running_var, twin.pre_norm.running_var)


def test_mbcsa_channels_last_and_non_contiguous():
    m = make_block(16, 16, False, 4).eval()
    x = torch.randn(2, 16, 11, 13)
    ref = m(x)
    torch.testing.assert_close(m(x.to(memory_format=torch.channels_last)), ref)
    m_cl = copy.deepcopy(m).to(memory_format=torch.channels_last)
    torch.testing.assert_close(m_cl(x.to(memory_format=torch.channels_last)), ref)
    wide = torch.randn(2, 16, 11, 26)[..., ::2]  # non-contiguous view
    assert not wide.is_contiguous()
    torch.testing.assert_close(m(wide), m(wide.contiguous()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mbcsa_low_precision_vs_float64(dtype):
    m = make_block(16, 24, True, 4).eval()
    x = torch.randn(2, 16, 10, 10)
    ref = copy.deepcopy(m).double()(x.double())
    out = copy.deepcopy(m).to(dtype)(x.to(dtype))
    assert out.dtype == dtype
    # a whole block (three convs, attention) in low precision: a few ulps of the dtype per stage
    assert_close_rel(out.float(), ref, torch.bfloat16, "block")


def test_mbcsa_autocast_cpu():
    m = make_block(16, 16, False, 4).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert_close_rel(out.float(), m(x), torch.bfloat16, "autocast")


def test_modules_equal_reference_functions():
    torch.manual_seed(0)
    h = torch.randn(2, 40, 6, 5)
    ca, sa, attention = ChannelAttention(40), SpatialAttention(7), ChannelSpatialAttention(40)
    torch.testing.assert_close(ca(h), R.channel_attention(h, ca.fc1.weight, ca.fc2.weight))
    torch.testing.assert_close(sa(h), R.spatial_attention(h, sa.conv.weight))
    torch.testing.assert_close(attention(h), R.channel_spatial_attention(
        h, attention.channel_attention.fc1.weight, attention.channel_attention.fc2.weight,
        attention.spatial_attention.conv.weight))
    assert ChannelAttention(8).fc1.out_channels == 1  # C // 16, at least 1
    stem = ConvBNGELU(3, 8, 3, downsample=True).eval()
    x = torch.randn(1, 3, 9, 9)
    torch.testing.assert_close(stem(x), torch.nn.functional.gelu(stem.norm(stem.conv(x))))
    assert stem(x).shape == (1, 8, 5, 5)


def test_dflt_shapes_and_size_check():
    d = DFLT(in_channels=12, feature_size=(4, 6), dim=32, depth=1, heads=2, head_dim=16)
    cls, dist = d(torch.randn(3, 12, 4, 6))
    assert cls.shape == dist.shape == (3, 32)
    assert d.pos_embed.shape == (1, 2 * 3 + 2, 32)
    assert DFLT(12, (4, 4), dim=32, depth=1, heads=2, head_dim=16,
                distillation=False)(torch.randn(1, 12, 4, 4)).shape == (1, 32)
    with pytest.raises(ValueError, match="expected a 4 x 6 feature map"):
        d(torch.randn(3, 12, 6, 6))


@pytest.mark.parametrize("kwargs,match", [
    (dict(inp=8, oup=16), "inp must equal oup"),
    (dict(inp=8, oup=8, expansion=0.5), "expansion >= 1"),
    (dict(inp=8, oup=8, kernel_size=4), "odd kernel_size"),
    (dict(inp=0, oup=8, downsample=True), "inp to be a positive int"),
    (dict(inp=8, oup=8, backend="cuda-magic"), "unknown hdkd backend 'cuda-magic'"),
])
def test_mbcsa_invalid_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MBCSA(**kwargs)


def test_mbcsa_invalid_input():
    m = MBCSA(8, 8)
    with pytest.raises(ValueError, match=r"4-D \(B x 8 x H x W\), got shape \(8, 5, 5\)"):
        m(torch.randn(8, 5, 5))
    with pytest.raises(ValueError, match=r"8 channels .* got shape \(1, 6, 5, 5\)"):
        m(torch.randn(1, 6, 5, 5))
    with pytest.raises(TypeError, match="dtype torch.float64 .* got torch.float32"):
        m(torch.randn(1, 8, 5, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating dtype"):
        m(torch.ones(1, 8, 5, 5, dtype=torch.int64))


def test_mbcsa_is_an_ordinary_module():
    m = make_block(8, 12, True, 4)
    sd = m.state_dict()
    assert "expand.weight" in sd and "attention.channel_attention.fc1.weight" in sd
    assert "shortcut.weight" in sd and "pre_norm.running_var" in sd
    m2 = MBCSA(8, 12, downsample=True)
    m2.load_state_dict(sd)
    x = torch.randn(1, 8, 6, 6)
    torch.testing.assert_close(m2.eval()(x), m.eval()(x))
    assert m.to(torch.float64)(x.double()).dtype == torch.float64


def test_mbcsa_compiles_fullgraph():
    m = make_block(8, 8, False, 4).eval()
    x = torch.randn(2, 8, 6, 5)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), m(x))


def test_explicit_backend_unavailable_is_an_error():
    hdkd.ops.register_backend(hdkd.ops.Backend(
        name="test_missing", devices=lambda: ("cpu",), ops={},
        unavailable_reason=lambda: "built without the test feature"))
    try:
        m = MBCSA(8, 8, backend="test_missing")
        with pytest.raises(hdkd.BackendUnavailableError, match="built without the test feature"):
            m(torch.randn(1, 8, 4, 4))
    finally:
        hdkd.ops.unregister_backend("test_missing")


def test_cbam_is_the_papers_name_for_channel_spatial_attention():
    assert hdkd.nn.CBAM is ChannelSpatialAttention
