"""Bootstrap confidence intervals and the per-image predictions CSV of `hdkd eval`."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from hdkd.bootstrap import BOOTSTRAP_METRICS, bootstrap_intervals, resample_metrics
from hdkd.cli import main
from hdkd.metrics import classification_metrics

sk = pytest.importorskip("sklearn.metrics")


def _case(n: int, k: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.2 * np.eye(k)[labels]
    return labels, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_resampled_metrics_match_sklearn():
    labels, probs = _case(40, k=3)
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 40, (6, 40))
    idx[5] = np.flatnonzero(labels != 2)[rng.integers(0, (labels != 2).sum(), 40)]  # no class 2
    got = resample_metrics(labels, probs, idx)
    for r in range(6):
        y, p = labels[idx[r]], probs[idx[r]]
        pred = p.argmax(axis=1)
        assert got["accuracy"][r] == pytest.approx(sk.accuracy_score(y, pred))
        assert got["balanced_accuracy"][r] == pytest.approx(sk.balanced_accuracy_score(y, pred))
        assert got["macro_f1"][r] == pytest.approx(sk.f1_score(y, pred, average="macro"))
        if r < 5:
            assert got["auroc_ovr"][r] == pytest.approx(
                sk.roc_auc_score(y, p, multi_class="ovr", labels=[0, 1, 2]))
    assert np.isnan(got["auroc_ovr"][5])


def test_intervals_hold_the_estimate_shrink_with_more_images_and_repeat():
    widths = {}
    for n in (60, 2000):
        labels, probs = _case(n)
        point = classification_metrics(labels, probs)
        ci = bootstrap_intervals(labels, probs, resamples=1000, seed=0)
        assert ci["level"] == 0.95 and ci["resamples"] == 1000
        for name in BOOTSTRAP_METRICS:
            assert ci[name]["low"] <= point[name] <= ci[name]["high"], (n, name)
        widths[n] = {name: ci[name]["high"] - ci[name]["low"] for name in BOOTSTRAP_METRICS}
    assert all(widths[2000][name] < 0.5 * widths[60][name] for name in BOOTSTRAP_METRICS)
    labels, probs = _case(60)
    assert bootstrap_intervals(labels, probs, 200, seed=3) == bootstrap_intervals(labels, probs,
                                                                                  200, seed=3)
    assert bootstrap_intervals(labels, probs, 200, seed=3) != bootstrap_intervals(labels, probs,
                                                                                  200, seed=4)
    with pytest.raises(ValueError, match="at least 1 resample"):
        bootstrap_intervals(labels, probs, 0)


def test_eval_prints_and_writes_intervals_and_a_predictions_csv(tmp_path, capsys):
    from test_calibration import _image_folder, _teacher_checkpoint

    data = _image_folder(tmp_path / "data")
    path = _teacher_checkpoint(tmp_path)
    assert main(["eval", str(path), "--data", data, "--no-plots"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "eval_test.json").read_text())
    ci = result["confidence_intervals"]
    assert ci["resamples"] == 1000 and ci["seed"] == 0
    assert ci["accuracy"]["low"] <= result["accuracy"] <= ci["accuracy"]["high"]
    assert f"[{ci['accuracy']['low']:.4f}, {ci['accuracy']['high']:.4f}] 95% CI" in printed
    rows = list(csv.DictReader((tmp_path / "eval_test_predictions.csv").open()))
    assert len(rows) == result["images"]
    assert set(rows[0]) == {"image", "label", "predicted", "correct", "confidence",
                            "prob_benign", "prob_malignant"}
    assert all(r["image"].endswith(".png") and r["label"] in ("benign", "malignant") for r in rows)
    assert np.mean([int(r["correct"]) for r in rows]) == pytest.approx(result["accuracy"])
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_predictions_come_back_in_dataset_order_from_several_ranks():
    """eval's loader gives rank r the items r, r + world, ...; the CSV rows must still line up
    with the dataset's images."""
    from torch.utils.data import DataLoader, TensorDataset

    from hdkd.distill.ddp import ShardSampler
    from hdkd.distill.evaluate import predict

    n = 7
    data = TensorDataset(torch.stack([torch.arange(float(n)), torch.zeros(n)], dim=1),
                         torch.arange(n) % 2)
    other = ShardSampler(n, 1, 2).indices  # what rank 1 evaluated
    rank1 = (np.array([i % 2 for i in other]), np.array([[float(i), 0.0] for i in other]), 0.0)

    class RankZeroOfTwo:
        device = torch.device("cpu")

        def all_gather(self, obj):
            return [obj, rank1]

    loader = DataLoader(data, batch_size=2, sampler=ShardSampler(n, 0, 2))
    labels, logits, _ = predict(torch.nn.Identity(), loader, RankZeroOfTwo())
    assert labels.tolist() == [i % 2 for i in range(n)]
    assert logits[:, 0].tolist() == list(range(n))
