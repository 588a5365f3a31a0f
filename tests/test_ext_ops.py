"""What is particular to the extension's CPU backend: auto's choice, float64 and depthwise kernels
above 7 on the reference, argument errors, the block under CPU autocast. The numerics on the shared
grid (odd shapes, layouts, dtypes, train and eval, ties, NaN) are in tests/test_conformance.py."""
from __future__ import annotations

import threading

import pytest
import torch

import hdkd
from hdkd.ops import reference as R
from ext_env import requires_ext
from helpers import assert_close_rel, rel_err

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


def _eval_calls():
    """(block, input, float64 reference output) for eval calls that take the fused kernel's kept
    buffers (csrc/cpu/scratch.h) in turns: larger and smaller, with and without downsampling,
    float32 and bfloat16, so that each call reuses buffers a different call sized and typed."""
    calls = []
    for i, (cin, cout, down, h, w, dtype) in enumerate([
            (16, 16, False, 14, 23, torch.float32), (8, 12, True, 9, 11, torch.bfloat16),
            (16, 16, False, 14, 13, torch.bfloat16), (8, 8, False, 5, 4, torch.float32),
            (8, 12, True, 17, 16, torch.float32)]):
        ours, ref = _blocks(cin, cout, down, seed=10 + i)
        ours.eval().to(dtype), ref.eval()
        x = torch.randn(2, cin, h, w).to(dtype)
        with torch.no_grad():
            calls.append((ours, x, ref(x.double())))
    return calls


def test_mbcsa_eval_reuses_its_buffers_across_shapes_and_dtypes():
    calls = _eval_calls()
    with torch.inference_mode():
        for _ in range(2):
            for block, x, ref in calls:
                assert_close_rel(block(x), ref, x.dtype, f"{tuple(x.shape)} {x.dtype}")


def test_mbcsa_eval_from_concurrent_python_threads():
    calls = _eval_calls()
    errors = []

    def run(order):
        try:
            with torch.inference_mode():
                for _ in range(5):
                    for block, x, ref in order:
                        assert_close_rel(block(x), ref, x.dtype, f"{tuple(x.shape)} {x.dtype}")
        except AssertionError as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(order,)) for order in (calls, calls[::-1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_kernel_gelu_elementwise():
    """The CPU kernels' GELU (csrc/cpu/activations.h) value by value, through the depthwise op
    with a 1 x 1 kernel of ones: |error| <= 1.5e-6 over [-12, 12], relative error <=
    5e-7 for x > 0, and inf, -inf, NaN as torch's GELU gives them."""
    x = torch.linspace(-12, 12, 16 * 64 * 65)
    special = torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, 1e-30, -1e-30, 1e30,
                            3.0, -3.0])
    x = torch.cat([x, special, torch.zeros(16 * 64 - special.numel())])
    x = x.view(1, 66, 64, 16).permute(0, 3, 1, 2)
    y = torch.ops.hdkd.dwconv_bn_gelu_eval(x, torch.ones(16, 1, 1, 1), torch.ones(16),
                                           torch.zeros(16))[0]
    ref = torch.nn.functional.gelu(x.double())
    finite = torch.isfinite(ref) & torch.isfinite(x)
    assert (y.double() - ref)[finite].abs().max() <= 1.5e-6
    positive = finite & (x > 0)
    assert ((y.double() - ref)[positive].abs() / ref[positive]).max() <= 5e-7
    assert torch.equal(y[~finite].isnan(), ref[~finite].isnan())
    assert torch.equal(y[~finite & ~ref.isnan()], ref[~finite & ~ref.isnan()].float())


def test_prepared_folded_weights_give_the_same_bits():
    """The backend's prepare_folded (GEMM weights cast to bfloat16 once per eval plan) against
    the kernel casting the float32 folded weights itself, bfloat16 and float32 inputs."""
    from hdkd.ops.ext.mbcsa import prepare_folded

    for down, dtype in ((False, torch.bfloat16), (True, torch.bfloat16), (True, torch.float32)):
        block, _ = _blocks(16, 24 if down else 16, down, seed=3)
        block.eval().to(dtype)
        x = torch.randn(1, 16, 9, 10).to(dtype)
        with torch.inference_mode():
            block(x)
            folded = block.folded_cache._entry[1]
            prepared = prepare_folded(x, folded)
            assert (prepared.expand_weight.dtype == dtype) and (prepared.dw_weight.dtype
                                                                == torch.float32)
            assert torch.equal(torch.ops.hdkd.mbcsa_eval(x, *prepared),
                               torch.ops.hdkd.mbcsa_eval(x, *folded))
            assert torch.equal(block(x), torch.ops.hdkd.mbcsa_eval(x, *folded))
