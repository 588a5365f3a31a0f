"""Model inference: the CNN teacher and the HDKD student (eval, mean of the two heads)."""
from __future__ import annotations

import pytest
import torch

import cases, floors
from harness import Workload, run

MODELS = ["hdkd_teacher", "hdkd"]


@pytest.mark.parametrize("name,dtype,impl", cases.model_params(MODELS, "models", "mbcsa_eval"))
def test_inference(benchmark, session, name, dtype, impl):
    model = cases.make_model(name, cases.backend_of(impl), training=False)
    fwd = cases.maybe_compile(model, impl)

    def infer(x):
        with torch.no_grad(), cases.autocast(dtype):
            return fwd(x)

    b, size = cases.model_batch(), cases.img_size()
    fl = cases.forward_flops(model)
    nbytes, rule = floors.inference_bytes(b * 3 * size * size, 4, floors.param_bytes(model),
                                          b * cases.NUM_CLASSES)
    wl = Workload("models", f"{name} inference @{size}", dtype, b, fl, "fvcore forward",
                  nbytes, rule, images=True, extra=cases.compile_note("models"))
    run(benchmark, session, wl, impl, infer, [(x,) for x in cases.images()])
