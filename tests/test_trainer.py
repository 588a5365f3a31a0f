"""The training loop: exact resume, repeatability, outputs, non-finite loss, strict teachers."""
from __future__ import annotations

import json
import math

import pytest
import torch

from hdkd.data import DatasetSplits
from hdkd.distill import checkpoint as ckpt
from hdkd.distill.config import TrainConfig
from hdkd.distill.trainer import NonFiniteLossError, train
from hdkd.models import CheckpointMismatchError, create_model, to_original_state_dict

SIZE = 16


class NoisyBlobs(torch.utils.data.Dataset):
    """Class-dependent images with per-access noise drawn from the global torch RNG, like a
    random augmentation: exact resume must restore that RNG. `poison` makes images NaN."""

    def __init__(self, n: int, seed: int, classes: int = 3):
        g = torch.Generator().manual_seed(seed)
        self.labels = [i % classes for i in range(n)]
        shift = torch.tensor(self.labels, dtype=torch.float32).view(-1, 1, 1, 1)
        self.images = torch.randn(n, 3, SIZE, SIZE, generator=g) * 0.5 + 0.4 * shift
        self.poison = False

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i] + 0.05 * torch.randn(3, SIZE, SIZE)
        return (x * float("nan") if self.poison else x), self.labels[i]


def tiny_splits() -> DatasetSplits:
    train_set = NoisyBlobs(24, seed=1)
    return DatasetSplits(train_set, NoisyBlobs(9, seed=2), NoisyBlobs(9, seed=3),
                         ["a", "b", "c"], list(train_set.labels))


def random_teacher(path, num_classes=3, fmt="hdkd"):
    torch.manual_seed(123)
    teacher = create_model("hdkd_teacher", num_classes=num_classes, img_size=SIZE)
    if fmt == "hdkd":
        torch.save(ckpt.make_model_checkpoint("hdkd_teacher", teacher, ["a", "b", "c"]), path)
    else:
        torch.save(to_original_state_dict(teacher), path)
    return teacher


def config(out, **kw) -> TrainConfig:
    base = dict(model="hdkd_student", out=str(out), epochs=2, img_size=SIZE, batch_size=8,
                warmup_epochs=1, progress=False, plots=False)
    return TrainConfig(**{**base, **kw})


class Crash(Exception):
    pass


def _crash_after_epoch_1(message: str) -> None:
    if "epoch 1/2" in message:
        raise Crash


def _without_time(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_resume_after_crash_is_bit_identical_to_a_straight_run(tmp_path):
    teacher = tmp_path / "teacher.pt"
    random_teacher(teacher)
    kw = dict(model="hdkd", teacher=str(teacher), ema_decay=0.9, clip_grad=1.0, plots=True)
    straight = train(config(tmp_path / "a", **kw), splits=tiny_splits(), log=lambda m: None)
    with pytest.raises(Crash):
        train(config(tmp_path / "b", **kw), splits=tiny_splits(), log=_crash_after_epoch_1)
    assert ckpt.read_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    resumed = train(config(tmp_path / "b", **kw), splits=tiny_splits(),
                    resume=str(tmp_path / "b" / "last.pt"), log=lambda m: None)

    a = ckpt.read_checkpoint(tmp_path / "a" / "last.pt")
    b = ckpt.read_checkpoint(tmp_path / "b" / "last.pt")
    for part in ("model", "ema"):
        for key, value in a[part].items():
            if torch.is_tensor(value):
                assert torch.equal(value, b[part][key]), f"{part} {key} differs after resume"
    for pid, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][key]), f"optimizer {pid} {key}"
    # The first epoch of run b is an independent run with the same seed: repeatable.
    assert _without_time(a["history"]) == _without_time(b["history"])
    assert straight["test_metrics"]["accuracy"] == resumed["test_metrics"]["accuracy"]

    out = tmp_path / "a"
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr", "seconds",
                "train_kd", "train_feature"):
        assert all(math.isfinite(r[key]) for r in records), key
    # the original's scheduler.step(0) after epoch 1 still gives the warm-up's first value
    assert records[0]["lr"] == records[1]["lr"] == pytest.approx(2e-5)
    best = ckpt.read_checkpoint(out / "best.pt")
    chosen = max(records, key=lambda r: r["val_accuracy"])  # first maximum on validation
    assert best["epoch"] == chosen["epoch"]
    for name in ("curves.png", "confusion_matrix.png", "test_metrics.json"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob("*.tmp")), "a temporary checkpoint file was left behind"


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    splits = tiny_splits()

    def poison_after_epoch_1(message):
        if "epoch 1/2" in message:
            splits.train.poison = True

    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1.*last\.pt \(after epoch 1\)"):
        train(config(tmp_path, model="hdkd_teacher"), splits=splits, log=poison_after_epoch_1)
    state = ckpt.read_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_teacher_checkpoints_load_strictly(tmp_path):
    splits = tiny_splits()
    wrong_classes = tmp_path / "t5.pt"
    random_teacher(wrong_classes, num_classes=5)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)t5\.pt.*classifier\.weight"):
        train(config(tmp_path / "x", model="hdkd", teacher=str(wrong_classes)), splits=splits)

    student = tmp_path / "student.pt"
    torch.save(ckpt.make_model_checkpoint(
        "hdkd_student", create_model("hdkd_student", num_classes=3, img_size=SIZE), None), student)
    with pytest.raises(ValueError, match="holds a 'hdkd_student' model, expected 'hdkd_teacher'"):
        train(config(tmp_path / "y", model="hdkd", teacher=str(student)), splits=splits)

    original = tmp_path / "original.pt"
    expected = random_teacher(original, fmt="original")
    loaded, meta = ckpt.load_model(original, "hdkd_teacher", num_classes=3, img_size=SIZE)
    assert meta["layout"] == "original"
    for key, value in expected.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key

    truncated = tmp_path / "truncated.pt"
    sd = to_original_state_dict(expected)
    sd.pop("classifier.bias")
    torch.save(sd, truncated)
    with pytest.raises(CheckpointMismatchError, match=r"missing \(1\): classifier\.bias"):
        ckpt.load_model(truncated, "hdkd_teacher", num_classes=3, img_size=SIZE)


def test_bad_settings_are_refused_with_the_field_named(tmp_path):
    with pytest.raises(ValueError, match="pass --teacher"):
        config(tmp_path, model="hdkd").resolved()
    with pytest.raises(ValueError, match="only --model hdkd uses a teacher"):
        config(tmp_path, teacher="t.pt").resolved()
    with pytest.raises(ValueError, match="epochs: expected a positive integer"):
        config(tmp_path, epochs=0).resolved()
    with pytest.raises(ValueError, match="amp: expected one of none, bf16, fp16"):
        config(tmp_path, amp="fp8").resolved()
    with pytest.raises(ValueError, match="--sync-bn is not supported"):
        train(config(tmp_path, sync_bn=True), splits=tiny_splits())
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        train(config(tmp_path, model="hdkd", teacher=str(tmp_path / "nope.pt")),
              splits=tiny_splits())


def test_recipe_defaults():
    teacher = TrainConfig(model="hdkd_teacher").resolved()
    assert (teacher.optimizer, teacher.lr, teacher.schedule) == ("adam", 1e-3, "constant")
    student = TrainConfig(model="hdkd", teacher="t.pt").resolved()
    assert (student.optimizer, student.lr, student.weight_decay, student.schedule,
            student.warmup_epochs, student.batch_size, student.epochs) == (
        "adamw", 5e-5, 0.05, "cosine", 5, 16, 200)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_train(tmp_path, amp):
    result = train(config(tmp_path, epochs=1, amp=amp, channels_last=True, lr=1e-3),
                   splits=tiny_splits(), log=lambda m: None)
    record = result["history"][0]
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])
    state = ckpt.read_checkpoint(tmp_path / "last.pt")
    assert state["scaler"] is not None and state["config"]["amp"] == amp


def test_class_balanced_sampler_option_trains(tmp_path):
    result = train(config(tmp_path, epochs=1, balanced_sampler=True), splits=tiny_splits(),
                   log=lambda m: None)
    assert math.isfinite(result["history"][0]["train_loss"])
