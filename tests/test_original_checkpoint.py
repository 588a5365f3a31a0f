"""Original-checkpoint conversion: outputs equal a model with the original layout, round trips,
strict errors."""
import pytest
import torch

from hdkd.models import (CheckpointMismatchError, create_model, from_original_state_dict,
                         to_original_state_dict)

from original_layout import OriginalStudent, OriginalTeacher, randomize_batch_norms


def original(name, num_classes=3, img_size=32):
    torch.manual_seed(0)
    if name == "hdkd_teacher":
        m = OriginalTeacher(num_classes)
    else:
        m = OriginalStudent(num_classes, img_size, distill=name == "hdkd")
    randomize_batch_norms(m)
    return m


@pytest.mark.parametrize("name", ["hdkd_teacher", "hdkd_student", "hdkd"])
@pytest.mark.parametrize("training", [False, True])
def test_converted_model_equals_original_layout(name, training):
    orig = original(name)
    sd = {k: v.clone() for k, v in orig.state_dict().items()}
    # num_classes (and the students' img_size) are read from the checkpoint
    kwargs = {"img_size": 32} if name == "hdkd_teacher" else {}
    model = from_original_state_dict(name, sd, **kwargs)
    assert model.num_classes == 3 and model.img_size == 32
    orig.train(training)
    model.train(training)
    x = torch.randn(2, 3, 32, 32)
    ref, out = orig(x), model(x)
    if name == "hdkd" and not training:
        ref = (ref[0] + ref[1]) / 2  # hdkd predicts with the mean of its two heads
    if name == "hdkd_student":
        ref = ref if isinstance(ref, torch.Tensor) else ref[0]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    if training:  # running statistics moved identically
        back = to_original_state_dict(model)
        for k, v in orig.state_dict().items():
            torch.testing.assert_close(back[k], v, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("name", ["hdkd_teacher", "hdkd_student", "hdkd"])
def test_round_trip(name):
    model = create_model(name, num_classes=4, img_size=32)
    sd = to_original_state_dict(model)
    assert set(sd) == set(original(name, 4).state_dict())
    back = from_original_state_dict(name, sd, img_size=32)
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert to_original_state_dict(back).keys() == sd.keys()


def test_original_training_checkpoint_wrapper_is_accepted():
    sd = to_original_state_dict(create_model("hdkd", num_classes=4, img_size=32))
    model = from_original_state_dict("hdkd", {"model": sd, "epoch": 3})
    assert model.num_classes == 4


def test_mismatch_lists_every_bad_key_and_loads_nothing():
    sd = to_original_state_dict(create_model("hdkd", num_classes=4, img_size=32))
    del sd["stage2.0.conv.fn.3.weight"]
    del sd["head_distill.bias"]
    sd["stage9.extra"] = torch.zeros(1)
    sd["stage3.1.conv.fn.7.weight"] = torch.zeros(1, 2, 3)
    with pytest.raises(CheckpointMismatchError) as e:
        from_original_state_dict("hdkd", sd)
    msg = str(e.value)
    assert "missing (2): head_distill.bias, stage2.0.conv.fn.3.weight" in msg
    assert "unexpected (1): stage9.extra" in msg
    assert "stage3.1.conv.fn.7.weight: expected (192, 768, 1, 1), got (1, 2, 3)" in msg


def test_wrong_model_name_for_checkpoint():
    sd = to_original_state_dict(create_model("hdkd_teacher", num_classes=4, img_size=32))
    with pytest.raises(CheckpointMismatchError, match="missing"):
        from_original_state_dict("hdkd", sd, img_size=32)


def test_explicit_img_size_mismatch_names_position_embedding():
    sd = to_original_state_dict(create_model("hdkd", num_classes=4, img_size=32))
    with pytest.raises(CheckpointMismatchError, match="DFLT_module.pos_embedding: expected"):
        from_original_state_dict("hdkd", sd, img_size=64)
