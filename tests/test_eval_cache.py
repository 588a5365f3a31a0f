"""The eval path's cached folded and packed weights (hdkd.nn.eval_cache): computed once, reused,
and picked up again after anything that changes a parameter or buffer: load_state_dict, an
optimizer step, a training forward (running statistics), an in-place edit, .to(); never in the
state_dict."""
from __future__ import annotations

import copy
import io

import pytest
import torch

import hdkd
from helpers import assert_close_rel
from hdkd.nn import DFLT, MBCSA, ConvBNGELU


def _small_student(backend="auto"):
    torch.manual_seed(0)
    return hdkd.models.HDKDStudent(num_classes=3, img_size=32, depths=(2, 2, 2),
                                   widths=(8, 12, 16), dim=16, depth=1, heads=2, head_dim=8,
                                   backend=backend)


def _randomize(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return model


def _caches(model):
    return [m.packed_cache if isinstance(m, DFLT) else m.folded_cache for m in model.modules()
            if isinstance(m, (MBCSA, ConvBNGELU, DFLT))]


def _check(model, reference, x):
    """model (default path) equals the reference with the same state, under no_grad."""
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=1e-4, atol=1e-5)


@pytest.fixture
def pair():
    model, reference = _randomize(_small_student()), _small_student("torch")
    return model.eval(), reference, torch.randn(2, 3, 32, 32)


def test_folded_once_and_reused(pair):
    model, reference, x = pair
    with torch.inference_mode():
        for _ in range(3):
            model(x)
    caches = _caches(model)
    assert len(caches) == 7 and all(c.computed == 1 for c in caches)
    _check(model, reference, x)


def test_state_dict_unchanged(pair):
    model, reference, x = pair
    with torch.no_grad():
        model(x)
    assert list(model.state_dict()) == list(reference.state_dict())


def test_load_state_dict_is_picked_up(pair):
    model, reference, x = pair
    with torch.no_grad():
        model(x)
    other = _randomize(_small_student())
    torch.manual_seed(5)
    for p in other.parameters():
        torch.nn.init.normal_(p, std=0.3)
    model.load_state_dict(other.state_dict())
    _check(model, reference, x)
    assert all(c.computed == 2 for c in _caches(model))


def test_optimizer_step_and_training_forward_are_picked_up(pair):
    model, reference, x = pair
    with torch.no_grad():
        model(x)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    cls, dist = model(x)
    (cls.square().sum() + dist.square().sum()).backward()
    opt.step()  # parameters and (in the forward) running statistics changed
    _check(model, reference, x)


def test_in_place_edit_of_one_buffer_is_picked_up(pair):
    model, reference, x = pair
    with torch.no_grad():
        model(x)
        model.stage2[1].dw_norm.running_var.mul_(3)
        model.stage1[0].norm.running_mean.add_(0.5)
    _check(model, reference, x)


def test_to_is_picked_up(pair):
    model, reference, x = pair
    with torch.no_grad():
        model(x)
    model = model.double().float().to(memory_format=torch.channels_last)
    _check(model, reference, x.contiguous(memory_format=torch.channels_last))


def test_a_module_copied_or_saved_does_not_carry_the_cache(pair):
    model, reference, x = pair
    with torch.no_grad():
        model(x)
    clone = copy.deepcopy(model)
    assert all(c.computed == 0 for c in _caches(clone))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert all(c.computed == 0 for c in _caches(loaded))
    _check(loaded, reference, x)


def test_gradients_still_flow_in_eval(pair):
    """With gradients (e.g. Grad-CAM on an eval model), the differentiable path runs, not the
    cached weights."""
    model, reference, x = pair
    reference.load_state_dict(model.state_dict())
    xg, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    model.eval()(xg).sum().backward()
    reference.eval()(xr).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-4, atol=1e-5)
    assert all(c.computed == 0 for c in _caches(model))


def test_autocast_bf16_eval(pair):
    model, reference, x = pair
    reference.load_state_dict(model.state_dict())
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        out, ref = model(x), reference.eval()(x)
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float(), rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("how", ["autocast", "compiled_autocast", "bfloat16_module"])
def test_stem_in_bfloat16(how):
    """The fused stem in bfloat16 (under autocast, eager or inductor-compiled, or a module and
    input cast to bfloat16): a bfloat16 channels_last result within bfloat16's bound of the
    float64 reference."""
    stem = _randomize(ConvBNGELU(3, 16, downsample=True)).eval()
    x = torch.randn(2, 3, 33, 31)
    exact = copy.deepcopy(stem).double()
    want = torch.nn.functional.gelu(exact.norm(exact.conv(x.double())))
    with torch.inference_mode():
        if how != "bfloat16_module":
            torch._dynamo.reset()
            run = torch.compile(stem) if how == "compiled_autocast" else stem
            with torch.autocast("cpu", torch.bfloat16):
                out = run(x)
        else:
            out = stem.bfloat16()(x.bfloat16())
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert_close_rel(out, want, torch.bfloat16, "stem")


def test_inductor_compile_of_the_default_eval_model_under_autocast(pair):
    model, reference, x = pair
    torch._dynamo.reset()
    compiled = torch.compile(model)
    reference.load_state_dict(model.state_dict())
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        out, ref = compiled(x), reference.eval()(x)
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float(), rtol=5e-2, atol=5e-2)


def test_torch_backend_keeps_the_reference_ops():
    stem = ConvBNGELU(3, 8, downsample=True).eval()
    with torch.no_grad():
        hdkd.set_backend("torch")
        try:
            stem(torch.randn(1, 3, 8, 8))
        finally:
            hdkd.set_backend(None)
    assert stem.folded_cache.computed == 0


def test_inductor_compile_of_the_default_eval_model(pair):
    model, reference, x = pair
    torch._dynamo.reset()
    compiled = torch.compile(model)
    reference.load_state_dict(model.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), reference.eval()(x), rtol=1e-4, atol=1e-5)


def _dflt_pair():
    torch.manual_seed(0)
    model = DFLT(12, (4, 6), dim=32, depth=2, heads=2, head_dim=16).eval()
    reference = DFLT(12, (4, 6), dim=32, depth=2, heads=2, head_dim=16, backend="torch").eval()
    reference.load_state_dict(model.state_dict())
    return model, reference


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_dflt_packed_linears_equal_nn_linear(layout):
    """The DFLT's eval path (linears from packed oneDNN weights, GELU fused into fc1) against
    nn.Linear, batch 1 and 3, under inference_mode with 2 threads; packed once."""
    model, reference = _dflt_pair()
    for batch in (1, 3):
        x = torch.randn(batch, 12, 4, 12)[..., ::2] if layout == "strided" else \
            torch.randn(batch, 12, 4, 6)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            got, want = model(x), reference(x)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert model.packed_cache.computed == 1 and reference.packed_cache.computed == 0


def test_dflt_packed_linears_in_bfloat16():
    """Under autocast the linears run from bfloat16 packed weights, as autocast's nn.Linear runs
    them; switching precision packs again."""
    model, reference = _dflt_pair()
    x = torch.randn(2, 12, 4, 6)
    with torch.inference_mode():
        model(x)
        with torch.autocast("cpu", torch.bfloat16):
            got, want = model(x), reference(x)
    assert model.packed_cache.computed == 2
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g.float(), w.float(), rtol=3e-2, atol=3e-2)


def test_dflt_weights_that_are_inference_tensors_run_unpacked():
    """A DFLT built under inference_mode has inference-tensor weights (no version counter to
    tell a change): nn.Linear runs, nothing is cached."""
    with torch.inference_mode():
        model = DFLT(12, (4, 6), dim=32, depth=1, heads=2, head_dim=16).eval()
        model(torch.randn(1, 12, 4, 6))
    assert model.packed_cache.computed == 0


def test_dflt_hooks_on_submodules_still_fire():
    """A forward hook on a DFLT submodule (attention rollout's, a feature probe's) is called: the
    submodules run while it is there, the packed linears once it is removed."""
    model, reference = _dflt_pair()
    x = torch.randn(1, 12, 4, 6)
    seen = []
    handle = model.layers[1].attn.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.inference_mode():
        model(x)
        assert len(seen) == 1 and model.packed_cache.computed == 0
        handle.remove()
        got, want = model(x), reference(x)
    assert model.packed_cache.computed == 1
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
