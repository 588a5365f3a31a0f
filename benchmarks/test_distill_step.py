"""One HDKD distillation step: ONE frozen teacher pass and ONE student pass with stage features,
HDKDLoss (logit KD + weighted feature KD, docs/model.md section 11 defaults), backward, AdamW."""
from __future__ import annotations

import pytest
import torch

from hdkd import flops
from hdkd.distill import HDKDLoss, forward_with_features

import cases, floors
from harness import DEVICE, Workload, run


def _params():
    return [pytest.param(dtype, impl, id=f"{dtype}-{impl}") for dtype in cases.DTYPES
            for impl in cases.impls("distill_step", ("mbcsa_train", "mbcsa_eval"))]


@pytest.mark.parametrize("dtype,impl", _params())
def test_distill_step(benchmark, session, dtype, impl):
    backend = cases.backend_of(impl)
    teacher = cases.make_model("hdkd_teacher", backend, training=False).requires_grad_(False)
    student = cases.make_model("hdkd", backend, training=True)
    t_fwd, s_fwd = cases.maybe_compile(teacher, impl), cases.maybe_compile(student, impl)
    loss_fn = HDKDLoss()
    opt = torch.optim.AdamW(student.parameters(), lr=5e-5, weight_decay=0.05)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        with cases.autocast(dtype):
            with torch.no_grad():
                t_logits, t_feats = forward_with_features(t_fwd, x)
            s_out, s_feats = forward_with_features(s_fwd, x)
            loss = loss_fn(s_out, s_feats, t_logits, t_feats, y)
        loss.backward()
        opt.step()

    b, size = cases.model_batch(), cases.img_size()
    one = torch.randn(1, 3, size, size, device=DEVICE)

    fl = b * (flops.count_flops(teacher, (one,)) + 3 * flops.count_flops(student, (one,)))

    nbytes, rule = floors.train_step_bytes(b * 3 * size * size, 4, floors.param_bytes(student))
    nbytes += floors.param_bytes(teacher)
    wl = Workload("distill_step", f"hdkd distillation step @{size}", dtype, b, fl,
                  "fvcore: teacher forward + 3 x student forward; loss and optimizer not counted",
                  nbytes, rule + " + teacher params read", images=True, training=True,
                  extra=cases.compile_note("distill_step"))
    run(benchmark, session, wl, impl, step, list(zip(cases.images(), cases.labels())))
