"""The reference ops: float64 gradcheck, and agreement with plain nn layers (docs/model.md)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hdkd.ops import reference as R

from original_layout import Cbam, Mbcsa, randomize_batch_norms

torch.manual_seed(0)


def dd(*shape, requires_grad=True):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=requires_grad)


def bn_state(c, requires_grad=True):
    return R.BatchNormState(1 + 0.1 * dd(c, requires_grad=False).requires_grad_(requires_grad),
                            dd(c, requires_grad=requires_grad) * 0.1,
                            torch.randn(c, dtype=torch.float64) * 0.1,
                            torch.rand(c, dtype=torch.float64) + 0.5)


def test_channel_gate_and_attention_gradcheck():
    h, w1, w2 = dd(2, 20, 3, 5), dd(1, 20, 1, 1), dd(20, 1, 1, 1)
    assert torch.autograd.gradcheck(R.channel_attention, (h, w1, w2))


def test_spatial_attention_gradcheck():
    # max over channels is differentiable almost everywhere; distinct values keep it so
    u, w = dd(2, 5, 4, 6), dd(1, 2, 7, 7)
    assert torch.autograd.gradcheck(R.spatial_attention, (u, w))


def test_channel_spatial_attention_gradcheck():
    h, w1, w2, ws = dd(1, 17, 5, 3), dd(1, 17, 1, 1), dd(17, 1, 1, 1), dd(1, 2, 7, 7)
    assert torch.autograd.gradcheck(R.channel_spatial_attention, (h, w1, w2, ws))


@pytest.mark.parametrize("training", [True, False])
def test_dwconv_bn_gelu_gradcheck(training):
    x, w = dd(2, 6, 5, 7), dd(6, 1, 3, 3)
    bn = bn_state(6)

    def f(x, w, g, b):
        return R.dwconv_bn_gelu(x, w, R.BatchNormState(g, b, bn.running_mean.clone(),
                                                        bn.running_var.clone()), training)
    assert torch.autograd.gradcheck(f, (x, w, bn.weight, bn.bias))


def test_dwconv_bn_gelu_stats_and_running_update():
    x, w = torch.randn(3, 8, 9, 6), torch.randn(8, 1, 3, 3)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    conv.weight.data = w
    bn = nn.BatchNorm2d(8)
    randomize_batch_norms(bn)
    state = R.BatchNormState(bn.weight, bn.bias, bn.running_mean.clone(), bn.running_var.clone())
    y, avg, mx = R.dwconv_bn_gelu(x, w, state, training=True)
    ref = F.gelu(bn(conv(x)))
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(avg, ref.mean((2, 3)))
    torch.testing.assert_close(mx, ref.amax((2, 3)))
    torch.testing.assert_close(state.running_mean, bn.running_mean)
    torch.testing.assert_close(state.running_var, bn.running_var)


def test_channel_spatial_attention_matches_layers():
    m = Cbam(40)
    h = torch.randn(2, 40, 7, 5)
    out = R.channel_spatial_attention(h, m.channel_attention.fc[0].weight,
                                      m.channel_attention.fc[2].weight,
                                      m.spatial_attention.conv1.weight)
    torch.testing.assert_close(out, m(h))


def _weights(m: Mbcsa) -> R.MBCSAWeights:
    def st(b):
        return R.BatchNormState(b.weight, b.bias, b.running_mean, b.running_var)
    f = m.conv.fn
    e1 = len(f) == 5
    return R.MBCSAWeights(
        pre_norm=st(m.conv.norm), expand=None if e1 else f[0].weight,
        expand_norm=None if e1 else st(f[1]), dw=f[0].weight if e1 else f[3].weight,
        dw_norm=st(f[1] if e1 else f[4]),
        ca_fc1=None if e1 else f[6].channel_attention.fc[0].weight,
        ca_fc2=None if e1 else f[6].channel_attention.fc[2].weight,
        sa_weight=None if e1 else f[6].spatial_attention.conv1.weight,
        project=f[3].weight if e1 else f[7].weight, project_norm=st(f[4] if e1 else f[8]),
        shortcut=m.proj.weight if m.downsample else None)


@pytest.mark.parametrize("inp,oup,down,e,hw", [(16, 16, False, 4, (7, 9)), (12, 20, True, 4, (9, 6)),
                                               (8, 8, False, 1, (5, 5)), (8, 12, True, 1, (7, 4))])
@pytest.mark.parametrize("training", [True, False])
def test_mbcsa_matches_layers(inp, oup, down, e, hw, training):
    torch.manual_seed(1)
    m = Mbcsa(inp, oup, down, e).double()
    randomize_batch_norms(m)
    twin = Mbcsa(inp, oup, down, e).double()
    twin.load_state_dict(m.state_dict())
    m.train(training)
    x = torch.randn(2, inp, *hw, dtype=torch.float64)
    out = R.mbcsa(x, _weights(twin), training)
    torch.testing.assert_close(out, m(x))
    for a, b in zip(m.buffers(), twin.buffers()):
        if a.dtype.is_floating_point:  # running statistics updated exactly like nn.BatchNorm2d
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("down", [False, True])
def test_mbcsa_gradcheck(training, down):
    torch.manual_seed(2)
    m = Mbcsa(6, 10 if down else 6, down, 4).double()
    randomize_batch_norms(m)
    w = _weights(m)
    x = dd(2, 6, 5, 3)

    def f(x, expand, dw, project, fc1, sa):
        ww = w._replace(expand=expand, dw=dw, project=project, ca_fc1=fc1, sa_weight=sa)
        return R.mbcsa(x, ww, training)
    params = [p.detach().clone().requires_grad_() for p in (w.expand, w.dw, w.project, w.ca_fc1,
                                                            w.sa_weight)]
    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("down", [False, True])
def test_fold_mbcsa_equals_eval(down):
    torch.manual_seed(3)
    m = Mbcsa(10, 14 if down else 10, down, 4).double().eval()
    randomize_batch_norms(m)
    x = torch.randn(3, 10, 9, 7, dtype=torch.float64)
    w = _weights(m)
    torch.testing.assert_close(R.mbcsa_folded(x, R.fold_mbcsa(w)), R.mbcsa(x, w, False))


def test_fold_mbcsa_rejects_expansion_1():
    m = Mbcsa(8, 8, False, 1).double()
    with pytest.raises(ValueError, match="expansion"):
        R.fold_mbcsa(_weights(m))
