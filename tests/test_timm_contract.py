"""timm's model contract for hdkd_teacher, hdkd_student and hdkd, through timm.create_model:
pretrained cfgs, forward / forward_features / forward_head, classifier resets, backward,
features_only and forward_intermediates, fx tracing, and pretrained=True from hdkd and
original-layout checkpoints. Models are built at img_size 32 (batch 2) to stay fast."""
import subprocess
import sys

import pytest
import torch

timm = pytest.importorskip("timm")

# importing hdkd registers its models with timm
from hdkd.data import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from hdkd.distill.checkpoint import make_model_checkpoint, save_atomic  # noqa: E402
from hdkd.models import create_model, to_original_state_dict  # noqa: E402

NAMES = ["hdkd_teacher", "hdkd_student", "hdkd"]
BACKENDS = ["torch", "auto"]
SIZE, BATCH = 32, 2
CLASSIFIERS = {"hdkd_teacher": ("classifier",), "hdkd_student": ("head",),
               "hdkd": ("head", "head_dist")}
POOLS = {"hdkd_teacher": "avg", "hdkd_student": "token", "hdkd": "token"}


def build(name, backend="auto", **kwargs):
    """Seeded: two models built alike have the same weights."""
    torch.manual_seed(0)
    return timm.create_model(name, img_size=SIZE, backend=backend, **kwargs)


def images(seed=0):
    return torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def as_tensor(out):
    return torch.cat(out) if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_a_pretrained_cfg_and_no_weights(name):
    assert name in timm.list_models("hdkd*")
    assert name not in timm.list_models(pretrained=True)
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    assert cfg["input_size"] == (3, 224, 224) and cfg["fixed_input_size"]
    assert cfg["pool_size"] == (28, 28) and cfg["num_classes"] == 7
    assert cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 1.0
    model = timm.create_model(name)
    assert model.default_cfg is model.pretrained_cfg
    assert model.num_classes == 7 and model.img_size == 224
    keys = model.state_dict()
    classifier = cfg["classifier"]
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    assert names == CLASSIFIERS[name]
    for module in (*CLASSIFIERS[name], cfg["first_conv"]):
        assert f"{module}.weight" in keys
    data = timm.data.resolve_data_config(model=model)
    assert data["input_size"] == (3, 224, 224) and data["crop_pct"] == 1.0
    assert data["mean"] == IMAGENET_MEAN and data["std"] == IMAGENET_STD


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_forward_features_and_head(name, backend):
    model = build(name, backend, num_classes=3).eval()
    x = images()
    with torch.no_grad():
        out = model(x)
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        torch.testing.assert_close(model.forward_head(features), out)
    assert out.shape == (BATCH, 3) and torch.isfinite(out).all()
    assert features.shape == (BATCH, model.num_features, SIZE // 8, SIZE // 8)
    assert pre_logits.shape == (BATCH, model.head_hidden_size)

    classifier = model.get_classifier()
    heads = classifier if isinstance(classifier, tuple) else (classifier,)
    assert [h.out_features for h in heads] == [3] * len(CLASSIFIERS[name])
    model.reset_classifier(0)
    assert model.num_classes == 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), pre_logits)
    model.reset_classifier(0, "")
    with torch.no_grad():
        torch.testing.assert_close(model(x), features)
    model.reset_classifier(5, POOLS[name])
    with torch.no_grad():
        assert model(x).shape == (BATCH, 5)

    unpooled = build(name, backend, num_classes=0, global_pool="").eval()
    with torch.no_grad():
        assert unpooled(x).shape == features.shape


@pytest.mark.parametrize("name", NAMES)
def test_bad_head_arguments_are_clear_errors(name):
    with pytest.raises(ValueError, match="global_pool to be one of"):
        build(name, global_pool="max")
    with pytest.raises(ValueError, match="pass num_classes=0 with it"):
        build(name, num_classes=4, global_pool="")
    with pytest.raises(ValueError, match="num_classes to be an int >= 0"):
        build(name, num_classes=-1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name, backend):
    model = build(name, backend, num_classes=4).train()
    out = as_tensor(model(images()))
    assert out.shape[-1] == 4
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


def test_distilled_heads_in_training_and_eval():
    model = build("hdkd", num_classes=3).train()
    x = images()
    cls, dist = model(x)
    assert cls.shape == dist.shape == (BATCH, 3)
    model.set_distilled_training(False)
    merged = model(x)  # BN statistics move in training: compare the shape and the structure
    assert isinstance(merged, torch.Tensor) and merged.shape == (BATCH, 3)
    model.eval()
    with torch.no_grad():
        tokens = model.dflt(model.forward_features(x))
        expected = (model.head(tokens[0]) + model.head_dist(tokens[1])) / 2
        torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_features_only_and_intermediates(name, backend):
    features = build(name, backend, features_only=True).eval()
    assert features.feature_info.channels() == [64, 96, 192]
    assert features.feature_info.reduction() == [2, 4, 8]
    model = build(name, backend).eval()
    x = images()
    with torch.no_grad():
        maps = features(x)
        final, intermediates = model.forward_intermediates(x)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        torch.testing.assert_close(final, model.forward_features(x))
    assert [tuple(m.shape) for m in maps] == [(BATCH, 64, 16, 16), (BATCH, 96, 8, 8),
                                               (BATCH, 192, 4, 4)]
    for a, b in zip(maps, intermediates, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(last_two, intermediates[1:])
    with pytest.raises(ValueError, match="stage indices"):
        model.forward_intermediates(x, indices=[3])


def fx_trace(model, train_nodes, eval_nodes):
    """The model symbolically traced as timm traces it (its leaf modules and functions), returning
    the given nodes in training and in eval mode."""
    from timm.models._features_fx import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor

    leaves = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    return create_feature_extractor(model, train_return_nodes=train_nodes,
                                    eval_return_nodes=eval_nodes, tracer_kwargs=leaves)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_fx_trace_matches_eager(name, backend):
    model = build(name, backend, num_classes=3).eval()
    x = images()
    # the eval output node: the heads' mean for hdkd, the (only) head otherwise
    out = "truediv" if name == "hdkd" else CLASSIFIERS[name][0]
    traced = fx_trace(model, [CLASSIFIERS[name][0]], [out]).eval()
    with torch.inference_mode():
        assert torch.equal(traced(x)[out], model(x))

    stages = build(name, backend, num_classes=3, features_only=True, feature_cls="fx").eval()
    with torch.inference_mode():
        stage_maps = model.forward_intermediates(x, intermediates_only=True)
        for a, b in zip(stages(x), stage_maps, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_fx_trace_trains(name):
    model = build(name, "torch", num_classes=4).train()
    heads = list(CLASSIFIERS[name])
    traced = fx_trace(model, heads, heads[-1:]).train()
    out = torch.cat(list(traced(images()).values()))
    assert out.shape == (BATCH * len(heads), 4)
    out.mean().backward()
    assert all(p.grad is not None for p in traced.parameters())


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], msg=k)


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_from_an_hdkd_checkpoint(name, tmp_path):
    trained = create_model(name, num_classes=4, img_size=SIZE)
    path = tmp_path / "best.pt"
    save_atomic(make_model_checkpoint(name, trained, ["a", "b", "c", "d"]), path)
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert loaded.num_classes == 4 and loaded.img_size == SIZE
    assert loaded.pretrained_cfg["label_names"] == ("a", "b", "c", "d")
    _same_weights(loaded, trained)

    other = "hdkd" if name != "hdkd" else "hdkd_student"
    with pytest.raises(ValueError, match=f"holds a {name!r} model"):
        timm.create_model(other, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_from_an_original_state_dict(name, tmp_path):
    trained = create_model(name, num_classes=3, img_size=SIZE)
    path = tmp_path / "original.pth"
    torch.save(to_original_state_dict(trained), path)
    overlay = dict(file=str(path))
    _same_weights(timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay),
                  trained)


def test_pretrained_backbone_for_a_new_task(tmp_path):
    trained = create_model("hdkd", num_classes=3, img_size=SIZE)
    path = tmp_path / "original.pth"
    torch.save(to_original_state_dict(trained), path)
    backbone = timm.create_model("hdkd", pretrained=True, num_classes=0,
                                 pretrained_cfg_overlay=dict(file=str(path)))
    assert backbone.num_classes == 0
    for k, v in backbone.state_dict().items():  # everything but the heads
        torch.testing.assert_close(v, trained.state_dict()[k], msg=k)


def test_pretrained_needs_a_checkpoint():
    with pytest.raises(ValueError, match="ships no pretrained weights"):
        timm.create_model("hdkd", pretrained=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        timm.create_model("hdkd", pretrained=True, pretrained_cfg_overlay=dict(file="/no/x.pt"))


def test_hdkd_imports_without_timm():
    code = ("import sys; sys.modules['timm'] = None\n"
            "import hdkd\n"
            "assert not hdkd.models.register_with_timm()\n"
            "assert hdkd.models.create_model('hdkd', img_size=32).num_classes == 7\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("name", NAMES)
def test_scriptable_models_compile_with_torchscript(name):
    fused = build(name, num_classes=3).eval()
    plain = build(name, num_classes=3, scriptable=True).eval()
    assert plain.state_dict().keys() == fused.state_dict().keys()
    plain.load_state_dict(fused.state_dict())
    x = images()
    with torch.inference_mode():
        expected = fused(x)
        torch.testing.assert_close(torch.jit.script(plain)(x), expected)
        if name == "hdkd":  # fx, then TorchScript
            traced = torch.jit.script(fx_trace(plain, ["head"], ["truediv"]).eval())
            torch.testing.assert_close(traced(x)["truediv"], expected)


def test_scriptable_blocks_train_as_the_fused_ones():
    fused = build("hdkd", num_classes=3).train()
    plain = build("hdkd", num_classes=3, scriptable=True).train()
    plain.load_state_dict(fused.state_dict())
    x = images()
    for a, b in zip(fused(x), plain(x), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(plain.state_dict(), fused.state_dict())  # BN statistics


def test_torchscript_of_a_fused_model_says_what_to_do():
    with pytest.raises(RuntimeError, match="needs a model built with scriptable=True"):
        torch.jit.script(build("hdkd_student"))
