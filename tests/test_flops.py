"""hdkd.flops: the formulas equal fvcore's count of the reference, custom ops are counted as the
reference through their handles, and fvcore agrees with torch.utils.flop_counter."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from hdkd import flops
from hdkd.models import create_model
from hdkd.nn import MBCSA
from hdkd.ops import reference
from hdkd.ops.reference import BatchNormState

NS = "hdkdflopstest"  # a namespace of its own, so the test ops never clash with hdkd's


def _block(cin, cout, downsample, expansion, training):
    torch.manual_seed(0)
    m = MBCSA(cin, cout, downsample=downsample, expansion=expansion, backend="torch")
    return m.train(training)


BLOCKS = [(96, 96, False, 4), (64, 96, True, 4), (16, 16, False, 1), (16, 24, True, 1),
          (20, 36, True, 4)]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("cin,cout,downsample,expansion", BLOCKS)
def test_mbcsa_formula_equals_fvcore(cin, cout, downsample, expansion, training):
    m = _block(cin, cout, downsample, expansion, training)
    x = torch.randn(3, cin, 13, 11)
    h_out, w_out = (7, 6) if downsample else (13, 11)
    expected = flops.mbcsa_flops(3, cin, cout, 13, 11, h_out, w_out, m.hidden, 3, training,
                                 attention=expansion != 1)
    assert flops.count_flops(m, (x,)) == expected


def _channel_spatial_attention_args(b=2, c=40, h=9, w=7):
    return (torch.randn(b, c, h, w), torch.randn(max(c // 16, 1), c, 1, 1),
            torch.randn(c, max(c // 16, 1), 1, 1), torch.randn(1, 2, 7, 7))


def _bn(c):
    return BatchNormState(torch.rand(c) + 0.5, torch.randn(c), torch.randn(c), torch.rand(c) + 0.5)


def test_attention_and_dwconv_formulas_equal_fvcore():
    args = _channel_spatial_attention_args()
    assert flops.count_flops(reference.channel_spatial_attention, args) == \
        flops.channel_spatial_attention_flops(2, 40, 9, 7, 2)
    x, w = torch.randn(2, 40, 9, 7), torch.randn(40, 1, 5, 5)
    for training in (False, True):
        bn = _bn(40)
        fn = lambda x, w: reference.dwconv_bn_gelu(x, w, bn, training)[0]  # noqa: E731
        assert flops.count_flops(fn, (x, w)) == flops.dwconv_bn_gelu_flops(2, 40, 9, 7, 5, training)


# Test ops registered like the extension's / Triton's: opaque to fvcore, so only a handle counts
# them. Names are custom op names of the op table (hdkd/ops/op_table.py), which maps them to
# their formulas: any other forward op in an hdkd* namespace would be an error to count.
@torch.library.custom_op(f"{NS}::channel_spatial_attention_forward", mutates_args=())
def _channel_spatial_attention_op(h: Tensor, fc1: Tensor, fc2: Tensor, sa: Tensor) -> Tensor:
    return reference.channel_spatial_attention(h, fc1, fc2, sa)


@torch.library.custom_op(f"{NS}::dwconv_bn_gelu_forward", mutates_args=())
def _dw_op(x: Tensor, w: Tensor, bw: Tensor, bb: Tensor, rm: Tensor, rv: Tensor,
           training: bool) -> tuple[Tensor, Tensor, Tensor]:
    y, a, m = reference.dwconv_bn_gelu(x, w, BatchNormState(bw, bb, rm.clone(), rv.clone()),
                                       training)
    return y, a, m


# out_like only gives the output its shape: the op is traced for shapes, its value is unused
@torch.library.custom_op(f"{NS}::mbcsa_eval", mutates_args=())
def _mbcsa_eval_op(x: Tensor, tensors: list[Tensor], out_like: Tensor) -> Tensor:
    return out_like.clone()


@pytest.mark.parametrize("cin,cout,downsample,expansion", BLOCKS)
def test_mbcsa_custom_op_counted_as_the_reference(cin, cout, downsample, expansion):
    m = _block(cin, cout, downsample, expansion, False)
    x = torch.randn(2, cin, 10, 12)
    ref = flops.count_flops(m, (x,))
    tensors = []
    for t in m.weights():
        if t is not None:
            tensors.extend(t if isinstance(t, BatchNormState) else [t])
    y = torch.randn(2, cout, *((5, 6) if downsample else (10, 12)))
    fused = flops.count_flops(lambda x, y, *ts: _mbcsa_eval_op(x, list(ts), y), (x, y, *tensors),
                              (NS,))
    assert fused == ref > 0


def _flop_counter_total(fn, args):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args)
    return counter.get_total_flops()


def _fvcore_matmul_only(model, args):
    by_op = flops.flop_analysis(model, args).by_operator()
    # torch's counter leaves out norms and, on the CPU, the fused attention kernel
    skip = ("batch_norm", "layer_norm", "scaled_dot_product_attention")
    return int(sum(v for op, v in by_op.items() if op not in skip))


@pytest.mark.parametrize("cin,cout,downsample,expansion", BLOCKS[:2])
def test_fvcore_matches_torch_flop_counter_on_blocks(cin, cout, downsample, expansion):
    m = _block(cin, cout, downsample, expansion, False)
    x = torch.randn(2, cin, 16, 16)
    # torch counts a multiply-add as 2 FLOPs and does not count norms
    assert 2 * _fvcore_matmul_only(m, (x,)) == _flop_counter_total(m, (x,))


@pytest.mark.parametrize("name", ["hdkd_teacher", "hdkd"])
def test_fvcore_matches_torch_flop_counter_on_models(name):
    m = create_model(name, num_classes=4, img_size=64, backend="torch").eval()
    x = torch.randn(2, 3, 64, 64)
    assert 2 * _fvcore_matmul_only(m, (x,)) == _flop_counter_total(m, (x,))


def test_attention_counted_as_its_two_matrix_products():
    q, k, v = torch.randn(2, 8, 50, 32), torch.randn(2, 8, 50, 32), torch.randn(2, 8, 50, 32)
    explicit = lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1), -1) @ v  # noqa: E731
    fused = flops.count_flops(torch.nn.functional.scaled_dot_product_attention, (q, k, v))
    assert 2 * fused == _flop_counter_total(explicit, (q, k, v)) > 0


def test_backward_ops_are_not_mapped():
    handles = flops.custom_op_handles((NS,))
    assert f"{NS}::channel_spatial_attention_forward" in handles
    assert not [k for k in handles if "backward" in k]


def test_flops_command(capsys):
    from hdkd.cli import main

    assert main(["flops", "hdkd_teacher", "--img-size", "64"]) == 0
    out = capsys.readouterr().out
    total = [line for line in out.splitlines() if line.startswith("total")][0].split()
    assert total[1] == "3,948,290"
    m = create_model("hdkd_teacher", num_classes=4, img_size=64).eval()
    gflops = flops.count_flops(m, (torch.randn(1, 3, 64, 64),)) / 1e9
    assert float(total[2]) == pytest.approx(gflops, abs=1e-3)
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[2:5]] == ["stage1", "stage2", "stage3"]


_TRITON_SCRIPT = """
import json, torch
from hdkd import flops
from hdkd.nn import MBCSA
out = []
for cin, cout, ds in ((32, 32, False), (32, 48, True)):
    for training in (False, True):
        torch.manual_seed(0)
        m = MBCSA(cin, cout, downsample=ds).train(training)
        x = torch.randn(1, cin, 6, 6)
        row = {}
        for backend in ("torch", "triton"):
            m.backend = backend
            by_op = flops.flop_analysis(m, (x,)).by_operator()
            # the triton eval path folds the BNs on each call: one small matrix-vector product
            row[backend] = int(sum(v for k, v in by_op.items() if k != "matmul"))
            row[backend + "_ops"] = sorted(by_op)
        out.append(row)
print(json.dumps(out))
"""


def test_triton_backend_counted_as_the_reference():
    """The Triton backend's custom ops (under the interpreter on the CPU) count as the reference."""
    pytest.importorskip("triton")
    from hdkd.ops.triton import INTERPRETER_PROBLEM
    if INTERPRETER_PROBLEM:
        pytest.skip(INTERPRETER_PROBLEM)
    import json
    import os
    import sys

    from helpers import run_outside_checkout
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = run_outside_checkout([sys.executable, "-c", _TRITON_SCRIPT], env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    for row in rows:
        assert row["triton"] == row["torch"] > 0
        assert any(op.startswith(("mbcsa", "channel_spatial_attention", "dwconv")) for op in row["triton_ops"]), row


def test_ext_backend_counted_as_the_reference():
    """The extension's ops (torch.ops.hdkd.*) count as the reference; needs hdkd._C built."""
    import hdkd

    reason = hdkd.backends().get("ext", "not registered")
    if reason != "available":
        pytest.skip(f"ext backend: {reason}")
    for cin, cout, ds in ((32, 32, False), (32, 48, True)):
        for training in (False, True):
            m = _block(cin, cout, ds, 4, training)
            x = torch.randn(1, cin, 6, 6)
            ref = flops.count_flops(m, (x,))
            m.backend = "ext"
            by_op = flops.flop_analysis(m, (x,)).by_operator()
            # an eval path may fold the BNs on each call: a small matrix-vector product
            assert int(sum(v for k, v in by_op.items() if k != "matmul")) == ref
