"""Eval plans (hdkd.nn.eval_plan): an eval forward without gradients keeps what it resolved to,
and the next call on a like input reuses it only while nothing it depends on has changed: a
replaced parameter or submodule, a .data swap, an in-place edit, a hook, the backend, autocast,
the input's dtype or shape all make a new plan, and the result always equals the reference."""
from __future__ import annotations

import copy
import gc
import io
import threading
import weakref

import pytest
import torch

import hdkd
from hdkd.nn import DFLT, MBCSA, ConvBNGELU
from test_eval_cache import _randomize, _small_student

PLANNED = (MBCSA, ConvBNGELU, DFLT)


def _plans(model):
    return [m.eval_plan for m in model.modules() if isinstance(m, PLANNED)]


@pytest.fixture
def pair():
    model, reference = _randomize(_small_student()).eval(), _small_student("torch").eval()
    reference.load_state_dict(model.state_dict())
    return model, reference, torch.randn(2, 3, 32, 32)


def _check(model, reference, x, **tol):
    reference.load_state_dict(model.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x), **(tol or dict(rtol=1e-4, atol=1e-5)))


def test_made_once_then_reused(pair):
    model, reference, x = pair
    for _ in range(3):
        _check(model, reference, x)
    plans = _plans(model)
    assert len(plans) == 7 and all(p.made == 1 for p in plans)


def _set_new_parameter(model):
    conv = model.stage2[1].project
    conv.weight = torch.nn.Parameter(conv.weight.detach() * 1.5)


def _replace_submodule(model):
    old = model.stage2[1].dw_norm
    new = torch.nn.BatchNorm2d(old.num_features).eval()
    new.load_state_dict(old.state_dict())
    with torch.no_grad():
        new.running_var.mul_(2)
    model.stage2[1].dw_norm = new


def _swap_data(model):
    p = model.dflt.layers[0].ff.fc2.weight
    p.data = p.data * 0.5


def _edit_in_place(model):
    with torch.no_grad():
        model.stage1[0].norm.running_mean.add_(0.3)
        model.dflt.layers[0].attn.qkv.weight.mul_(1.2)


def _set_eps(model):
    model.stage2[0].pre_norm.eps = 0.5  # all the block's BNs use pre_norm's eps
    model.stage1[1].norm.eps = 0.25


@pytest.mark.parametrize("change", [_set_new_parameter, _replace_submodule, _swap_data,
                                    _edit_in_place, _set_eps])
def test_a_change_makes_a_new_plan(pair, change):
    model, reference, x = pair
    _check(model, reference, x)
    change(model)
    if change is _set_eps:
        reference.stage2[0].pre_norm.eps = 0.5
        reference.stage1[1].norm.eps = 0.25
    _check(model, reference, x)
    assert sum(p.made for p in _plans(model)) > 7


def test_input_dtype_shape_layout_and_autocast_make_new_plans(pair):
    model, reference, x = pair
    _check(model, reference, x)
    _check(model, reference, torch.randn(1, 3, 32, 32))
    _check(model, reference, x.contiguous(memory_format=torch.channels_last))
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        out, ref = model(x), reference(x)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=5e-2, atol=5e-2)
    _check(model, reference, x)  # back to float32
    assert all(p.made == 5 for p in _plans(model))


def test_the_backend_setting_is_followed(pair):
    """After set_backend("torch"), the stem and the DFLT run their submodules (hooks on them
    fire) and the blocks the reference, not the plans made before."""
    model, reference, x = pair
    _check(model, reference, x)
    calls = []
    for m in (model.stage1[0].conv, model.dflt.layers[0].ff.fc1):
        m.register_forward_hook(lambda *a: calls.append(1))
    hdkd.set_backend("torch")
    try:
        _check(model, reference, x)
    finally:
        hdkd.set_backend(None)
    assert calls == [1, 1]
    assert all(b.eval_plan.made == 2 for b in model.modules() if isinstance(b, MBCSA))


def test_a_hook_on_a_dflt_submodule_fires(pair):
    model, reference, x = pair
    _check(model, reference, x)
    seen = []
    handle = model.dflt.layers[0].attn.register_forward_pre_hook(lambda m, a: seen.append(1))
    _check(model, reference, x)
    assert seen == [1]
    handle.remove()
    _check(model, reference, x)
    assert seen == [1]


def test_none_with_gradients_in_training_or_compiled(pair):
    model, reference, x = pair
    model(x).sum().backward()  # eval, with gradients
    model.train()
    model(x)  # updates the running statistics
    model.eval()
    reference.load_state_dict(model.state_dict())
    torch._dynamo.reset()
    with torch.inference_mode():
        torch.testing.assert_close(torch.compile(model)(x), reference(x), rtol=1e-4, atol=1e-5)
    assert all(p.made == 0 for p in _plans(model))


def test_not_copied_saved_or_kept_alive(pair):
    model, reference, x = pair
    _check(model, reference, x)
    assert all(p.made == 0 for p in _plans(copy.deepcopy(model)))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    assert all(p.made == 0 for p in _plans(torch.load(buf, weights_only=False)))


def test_a_plan_does_not_keep_its_model_alive():
    model = _small_student().eval()
    with torch.inference_mode():
        model(torch.randn(1, 3, 32, 32))
    assert all(p.made == 1 for p in _plans(model))
    gc.disable()  # no reference cycle: the model goes with its last reference
    try:
        ref = weakref.ref(model)
        del model
        assert ref() is None
    finally:
        gc.enable()


def test_two_threads_with_different_inputs_share_a_model(pair):
    """One model run from two Python threads at once, one in float32 and one under bfloat16
    autocast, so that its plans change hands on every call: each thread gets its own input's
    result."""
    model, reference, x = pair
    with torch.inference_mode():
        want32 = reference(x)
        with torch.autocast("cpu", torch.bfloat16):
            want16 = reference(x).float()
    errors = []

    def run(bf16: bool):
        try:
            for _ in range(30):
                with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    out = model(x)
                if bf16:
                    torch.testing.assert_close(out.float(), want16, rtol=5e-2, atol=5e-2)
                else:
                    torch.testing.assert_close(out, want32, rtol=1e-4, atol=1e-5)
        except AssertionError as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(bf16,)) for bf16 in (False, True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
