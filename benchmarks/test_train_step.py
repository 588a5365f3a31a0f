"""One training step (forward, cross-entropy, backward, AdamW) of the teacher and of the student
trained without distillation (class token only)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cases, floors
from harness import Workload, run

# model -> AdamW settings of its original recipe (the teacher's recipe uses Adam; the
# docs/performance.md anchor times the teacher step with AdamW, so this does too)
MODELS = {"hdkd_teacher": dict(lr=1e-3, weight_decay=0.0),
          "hdkd_student": dict(lr=5e-5, weight_decay=0.05)}


@pytest.mark.parametrize("name,dtype,impl", cases.model_params(MODELS, "train_step", "mbcsa_train"))
def test_train_step(benchmark, session, name, dtype, impl):
    model = cases.make_model(name, cases.backend_of(impl), training=True)
    fwd = cases.maybe_compile(model, impl)
    opt = torch.optim.AdamW(model.parameters(), **MODELS[name])

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        with cases.autocast(dtype):
            loss = F.cross_entropy(fwd(x).float(), y)
        loss.backward()
        opt.step()

    b, size = cases.model_batch(), cases.img_size()
    fl = 3 * cases.forward_flops(model)
    nbytes, rule = floors.train_step_bytes(b * 3 * size * size, 4, floors.param_bytes(model))
    wl = Workload("train_step", f"{name} train step @{size}", dtype, b, fl,
                  "fvcore forward x 3 (forward + backward); optimizer not counted", nbytes, rule,
                  images=True, training=True, extra=cases.compile_note("train_step"))
    run(benchmark, session, wl, impl, step, list(zip(cases.images(), cases.labels())))
