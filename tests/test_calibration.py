"""Calibration: ECE / Brier / NLL, temperature scaling on an over-confident model, and the
temperature stored in checkpoints and applied by `hdkd eval` and the trainer."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hdkd.cli import main
from hdkd.distill import checkpoint as ckpt
from hdkd.distill.temperature import fit_temperature, scaled_probabilities
from hdkd.metrics import calibration_metrics, expected_calibration_error, reliability_bins
from hdkd.models import create_model

sk = pytest.importorskip("sklearn.metrics")


def overconfident_case(n: int, seed: int, sharpen: float = 4.0):
    """Labels drawn from softmax(z) (so softmax(z) is calibrated) and a model reporting
    sharpen * z: right as often, far more sure of itself."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.0, (n, 4)) + 1.0 * np.eye(4)[rng.integers(0, 4, n)]
    p = scaled_probabilities(z)
    labels = np.array([rng.choice(4, p=row) for row in p])
    return labels, sharpen * z


def test_ece_brier_nll_by_hand():
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.55, 0.45]])
    # bins of width 1/15: confidences 0.9 | 0.8 | 0.7 | 0.55 fall in four different bins
    want_ece = (abs(1 - 0.9) + abs(1 - 0.8) + abs(0 - 0.7) + abs(1 - 0.55)) / 4
    assert expected_calibration_error(labels, probs) == pytest.approx(want_ece)
    m = calibration_metrics(labels, probs)
    onehot = np.eye(2)[labels]
    assert m["brier"] == pytest.approx(((probs - onehot) ** 2).sum(axis=1).mean())
    assert m["nll"] == pytest.approx(-np.log(probs[np.arange(4), labels]).mean())
    bins = reliability_bins(labels, probs)
    assert bins["count"].sum() == 4 and len(bins["edges"]) == 16
    # a confidence exactly on an edge belongs to the bin below it: (lo, hi]
    edge = reliability_bins([0], [[2 / 15 * 7, 1 - 2 / 15 * 7]])  # 0.9333 = edge 14
    assert edge["count"][13] == 1


def test_temperature_scaling_fixes_an_overconfident_model():
    val_labels, val_logits = overconfident_case(3000, seed=0)
    test_labels, test_logits = overconfident_case(3000, seed=1)
    t = fit_temperature(val_logits, val_labels)
    assert t == pytest.approx(4.0, rel=0.15)  # undoes the sharpening
    before = calibration_metrics(test_labels, scaled_probabilities(test_logits))
    after = calibration_metrics(test_labels, scaled_probabilities(test_logits, t))
    assert after["ece"] < 0.5 * before["ece"] and after["ece"] < 0.03
    assert after["nll"] < before["nll"] and after["brier"] < before["brier"]
    # accuracy is untouched: the argmax does not move
    assert (scaled_probabilities(test_logits, t).argmax(1) == test_logits.argmax(1)).all()


def test_fit_temperature_refuses_mismatched_inputs_and_warns_at_the_bounds():
    with pytest.raises(ValueError, match="N x classes logits and N labels"):
        fit_temperature(np.zeros((3, 2)), [0, 1])
    # two correctly ranked images: the NLL keeps falling as T -> 0
    with pytest.warns(UserWarning, match="edge of the search range.*2 validation images"):
        assert fit_temperature(np.array([[1.0, 0.0], [0.0, 1.0]]), [0, 1]) < 0.06


def _image_folder(root, per_class=6, size=12):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(("benign", "malignant")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.normal(80 + 80 * c, 30, (size, size, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return str(root)


def _teacher_checkpoint(tmp_path):
    """An untrained 2-class teacher's best.pt, with the split settings of a training run."""
    torch.manual_seed(0)
    model = create_model("hdkd_teacher", num_classes=2, img_size=16)
    path = tmp_path / "best.pt"
    ckpt.save_atomic(ckpt.make_model_checkpoint("hdkd_teacher", model, ["benign", "malignant"],
                                                config={"val_fraction": 0.3, "test_fraction": 0.3}),
                     path)
    return path


@pytest.mark.filterwarnings("ignore:temperature scaling")  # tiny val split
def test_eval_calibrate_stores_the_temperature_and_eval_applies_it(tmp_path, capsys):
    data = _image_folder(tmp_path / "data")
    path = _teacher_checkpoint(tmp_path)
    # an old checkpoint has no temperature: 1.0, reported without a before/after
    assert main(["eval", str(path), "--data", data, "--json", str(tmp_path / "plain.json")]) == 0
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert plain["temperature"] == 1.0 and "uncalibrated" not in plain
    assert {"ece", "brier", "nll"} <= set(plain) and (tmp_path / "reliability_test.png").is_file()

    capsys.readouterr()
    assert main(["eval", str(path), "--data", data, "--calibrate", "--json",
                 str(tmp_path / "cal.json")]) == 0
    printed = capsys.readouterr().out
    stored = ckpt.read_checkpoint(path)["temperature"]
    cal = json.loads((tmp_path / "cal.json").read_text())
    assert cal["temperature"] == stored != 1.0 and "temperature scaling: T =" in printed
    assert cal["uncalibrated"]["ece"] == pytest.approx(plain["ece"])
    assert cal["accuracy"] == plain["accuracy"] and "before temperature scaling" in printed
    # a later eval applies the stored temperature without refitting
    assert main(["eval", str(path), "--data", data, "--json", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["temperature"] == stored and again["nll"] == pytest.approx(cal["nll"])
    # exports keep it (hdkd layout) or say how to apply it (original layout)
    assert main(["convert", str(path), str(tmp_path / "copy.pt"), "--to", "hdkd"]) == 0
    assert ckpt.read_checkpoint(tmp_path / "copy.pt")["temperature"] == stored
    assert main(["convert", str(path), str(tmp_path / "original.pt")]) == 0
    assert f"softmax(logits / {stored:.6g})" in capsys.readouterr().out


def test_eval_calibrate_refuses_a_plain_state_dict(tmp_path, capsys):
    path = tmp_path / "plain.pt"
    torch.save(create_model("hdkd_teacher", num_classes=10, img_size=16).state_dict(), path)
    assert main(["eval", str(path), "--model", "hdkd_teacher", "--data", "digits",
                 "--calibrate"]) == 2
    assert "convert it first" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:temperature scaling")  # tiny val split
def test_trainer_calibrate_stores_the_temperature_in_best_pt(tmp_path):
    from test_trainer import config, tiny_splits

    from hdkd.distill.trainer import train

    result = train(config(tmp_path, epochs=1, calibrate=True, plots=True), splits=tiny_splits(),
                   log=lambda m: None)
    metrics = result["test_metrics"]
    best = ckpt.read_checkpoint(tmp_path / "best.pt")
    assert metrics["temperature"] == best["temperature"] != 1.0
    assert {"ece", "brier", "nll"} <= set(metrics["uncalibrated"])
    written = json.loads((tmp_path / "test_metrics.json").read_text())
    assert written["temperature"] == metrics["temperature"]
    assert (tmp_path / "reliability.png").is_file()
