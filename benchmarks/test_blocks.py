"""The MBCSA blocks of docs/performance.md (section 2): eval forward and training
forward+backward."""
from __future__ import annotations

import pytest
import torch

from hdkd import flops
from hdkd.nn import MBCSA

import cases, floors
from harness import DEVICE, Workload, run


def _params():
    out = []
    for i, (cin, cout, hw, ds) in enumerate(cases.blocks()):
        for training in (False, True):
            op = "mbcsa_train" if training else "mbcsa_eval"
            for dtype in cases.DTYPES:
                for impl in cases.impls("blocks", (op,), i == 0):
                    mode = "train_fwd+bwd" if training else "eval_fwd"
                    out.append(pytest.param(cin, cout, hw, ds, training, dtype, impl,
                                            id=f"{cases.block_name(cin, cout, hw, ds)}-{mode}"
                                               f"-{dtype}-{impl}"))
    return out


def _block(cin, cout, ds, training, backend):
    torch.manual_seed(0)
    m = MBCSA(cin, cout, downsample=ds, backend=backend)
    m = cases.randomize_bn_stats(m).to(DEVICE, memory_format=torch.channels_last)
    return m.train(training)


def _step(module, impl, training, dtype):
    fwd = cases.maybe_compile(module, impl)
    if not training:
        def call(x, _):
            with torch.no_grad(), cases.autocast(dtype):
                return fwd(x)
        return call

    def step(x, g):
        with cases.autocast(dtype):
            out = fwd(x)
        out.backward(g)
    return step


@pytest.mark.parametrize("cin,cout,hw,ds,training,dtype,impl", _params())
def test_mbcsa(benchmark, session, cin, cout, hw, ds, training, dtype, impl):
    module = _block(cin, cout, ds, training, cases.backend_of(impl))
    b, h_out = cases.batch(), (hw + 1) // 2 if ds else hw
    act = cases.torch_dtype(dtype)
    sets = []
    for _ in range(2):
        x = torch.randn(b, cin, hw, hw, device=DEVICE).contiguous(
            memory_format=torch.channels_last).requires_grad_(training)
        g = torch.randn(b, cout, h_out, h_out, device=DEVICE, dtype=act).contiguous(
            memory_format=torch.channels_last) if training else None
        sets.append((x, g))

    # counted through the module's own backend (compile: the eager module it wraps)
    one = torch.randn(1, cin, hw, hw, device=DEVICE)
    fl = (3 if training else 1) * b * flops.count_flops(module, (one,))

    itemsize = torch.finfo(act).bits // 8
    nbytes, rule = floors.block_bytes(b * cin * hw * hw, b * cout * h_out * h_out,
                                      b * module.hidden * h_out * h_out, itemsize,
                                      floors.param_bytes(module), training)
    name = f"mbcsa {'train fwd+bwd' if training else 'eval fwd'} " + \
        cases.block_name(cin, cout, hw, ds)
    wl = Workload("blocks", name, dtype, b, fl,
                  "fvcore forward" + (" x 3 (forward + backward)" if training else ""),
                  nbytes, rule, training=training)
    run(benchmark, session, wl, impl, _step(module, impl, training, dtype), sets)
