"""What is particular to the extension's CPU backend: auto's choice, float64 and depthwise kernels
above 7 on the reference, argument errors, the block under CPU autocast. The numerics on the shared
grid (odd shapes, layouts, dtypes, train and eval, ties, NaN) are in tests/test_conformance.py."""
from __future__ import annotations

import pytest
import torch

import hdkd
from hdkd.ops import reference as R
from ext_env import requires_ext
from helpers import rel_err

pytestmark = requires_ext


def _attention_inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    r = max(c // 16, 1)
    return [torch.randn(shape, generator=g, dtype=torch.float64),
            torch.randn(r, c, 1, 1, generator=g, dtype=torch.float64) * 0.3,
            torch.randn(c, r, 1, 1, generator=g, dtype=torch.float64) * 0.3,
            torch.randn(1, 2, 7, 7, generator=g, dtype=torch.float64) * 0.3]


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
        torch.ops.hdkd.channel_spatial_attention_forward(h, fc1, fc2[:4], sa)
    with pytest.raises(RuntimeError, match="weight of shape"):
        torch.ops.hdkd.dwconv_bn_gelu_eval(h, torch.ones(8, 1, 3, 2), torch.ones(8),
                                           torch.zeros(8))
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        torch.ops.hdkd.channel_spatial_attention_forward(h.int(), fc1, fc2, sa)


@pytest.mark.parametrize("grad", [False, True], ids=["fused", "composed"])
def test_mbcsa_under_cpu_autocast(grad):
    ours, ref = _blocks(16, 16, False, seed=3)
    ours.eval(), ref.eval()
    x = torch.randn(2, 16, 8, 6)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(x)
    assert rel_err(out, ref(x.double())) < 1e-2


def test_large_depthwise_kernel_runs_the_reference():
    torch.manual_seed(0)
    ours = hdkd.nn.MBCSA(8, 8, kernel_size=9, backend="ext").eval()
    ref = hdkd.nn.MBCSA(8, 8, kernel_size=9, backend="torch").eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))
