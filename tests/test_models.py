"""Models: parameter counts, outputs, sizes, single-pass features, registries."""
import pytest
import torch

from hdkd.distill import forward_with_features
from hdkd.models import HDKDStudent, HDKDTeacher, create_model, list_models


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_the_paper():
    assert n_params(create_model("hdkd_teacher", num_classes=4)) == 3_948_290
    assert n_params(create_model("hdkd", num_classes=4)) == 3_725_746
    # the non-distilled student lacks the distillation token (256), its position (256) and head
    assert n_params(create_model("hdkd_student", num_classes=4)) == 3_725_746 - 512 - (256 * 4 + 4)


def test_list_models():
    assert list_models() == ["hdkd", "hdkd_student", "hdkd_teacher"]
    with pytest.raises(ValueError, match="unknown model 'resnet'; expected one of: hdkd, "):
        create_model("resnet")


def test_outputs_train_and_eval():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    m = create_model("hdkd", num_classes=5, img_size=32)
    cls, dist = m.train()(x)
    assert cls.shape == dist.shape == (2, 5)
    m.eval()
    with torch.no_grad():
        out, feats = m(x, return_features=True)
        c, d = m.dflt(feats[2])
        torch.testing.assert_close(out, (m.head(c) + m.head_dist(d)) / 2)
    assert create_model("hdkd_student", num_classes=3, img_size=32)(x).shape == (2, 3)
    assert create_model("hdkd_teacher", num_classes=3, img_size=32)(x).shape == (2, 3)


@pytest.mark.parametrize("name", ["hdkd_teacher", "hdkd_student", "hdkd"])
def test_wrong_input_size_is_a_clear_error(name):
    m = create_model(name, num_classes=2, img_size=32)
    with pytest.raises(ValueError, match="expected 32 x 32 images .* got 48 x 48"):
        m(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="3 channels"):
        m(torch.randn(1, 1, 32, 32))


def test_img_size_must_tile_the_patches():
    with pytest.raises(ValueError, match=r"multiple of 16 .*, got 40"):
        create_model("hdkd", img_size=40)
    assert create_model("hdkd", img_size=48, num_classes=2).dflt.pos_embed.shape[1] == 9 + 2
    assert create_model("hdkd", num_classes=2).dflt.pos_embed.shape[1] == 196 + 2


@pytest.mark.parametrize("name", ["hdkd_teacher", "hdkd_student", "hdkd"])
def test_forward_with_features_is_one_pass(name):
    m = create_model(name, num_classes=3, img_size=32).eval()
    calls = []
    for stage in (m.stage1, m.stage2, m.stage3):
        stage.register_forward_hook(lambda mod, i, o: calls.append(o))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, feats = forward_with_features(m, x)
        assert len(calls) == 3, "each stage must run exactly once"
        assert [tuple(f.shape) for f in feats] == [(2, 64, 16, 16), (2, 96, 8, 8), (2, 192, 4, 4)]
        for f, c in zip(feats, calls):
            assert f is c
        torch.testing.assert_close(out, m(x))


def test_teacher_and_student_stage_shapes_align():
    x = torch.randn(1, 3, 64, 64)
    _, ft = create_model("hdkd_teacher", img_size=64)(x, return_features=True)
    _, fs = create_model("hdkd", img_size=64)(x, return_features=True)
    assert [f.shape for f in ft] == [f.shape for f in fs]


def test_forward_with_features_rejects_other_models():
    with pytest.raises(TypeError):
        forward_with_features(torch.nn.Identity(), torch.randn(1, 3, 8, 8))


def test_channels_last_model():
    m = create_model("hdkd", num_classes=3, img_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = m(x)
    m = m.to(memory_format=torch.channels_last)
    torch.testing.assert_close(m(x.to(memory_format=torch.channels_last)), ref,
                               rtol=1e-4, atol=1e-5)


def test_timm_registry():
    timm = pytest.importorskip("timm")
    import hdkd.models  # noqa: F401  (registers the three names)
    m = timm.create_model("hdkd", num_classes=4)
    assert isinstance(m, HDKDStudent) and m.distillation
    assert isinstance(timm.create_model("hdkd_teacher", num_classes=4), HDKDTeacher)
    assert not timm.create_model("hdkd_student", num_classes=4, img_size=32).distillation
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("hdkd", pretrained=True)
