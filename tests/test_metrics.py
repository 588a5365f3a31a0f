"""hdkd.metrics against scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest

from hdkd.metrics import binary_auroc, classification_metrics, format_metrics_table

sk = pytest.importorskip("sklearn.metrics")


def _random_case(seed, n=200, k=4, ties=False):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
    if ties:
        logits = np.round(logits)  # many equal scores
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


@pytest.mark.parametrize("seed,k,ties", [(0, 4, False), (1, 7, False), (2, 3, True), (3, 2, False)])
def test_matches_sklearn(seed, k, ties):
    labels, probs = _random_case(seed, k=k, ties=ties)
    preds = probs.argmax(axis=1)
    m = classification_metrics(labels, probs, [f"c{i}" for i in range(k)])
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(labels, preds))
    assert m["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, preds))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(labels, preds, average="macro"))
    p, r, f, s = sk.precision_recall_fscore_support(labels, preds, labels=list(range(k)),
                                                    zero_division=0)
    for c, row in enumerate(m["per_class"]):
        assert row["class"] == f"c{c}"
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[c], r[c], f[c]))
        assert row["support"] == s[c]
        assert row["auroc"] == pytest.approx(sk.roc_auc_score(labels == c, probs[:, c]))
    if k == 2:
        want = sk.roc_auc_score(labels, probs[:, 1])
    else:
        want = sk.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert m["auroc_ovr"] == pytest.approx(want)
    assert m["confusion_matrix"] == sk.confusion_matrix(labels, preds, labels=list(range(k))).tolist()
    assert "auroc_note" not in m and m["num_samples"] == len(labels)


def test_binary_auroc_with_ties():
    positive = np.array([1, 0, 1, 0, 1, 0], dtype=bool)
    scores = np.array([0.5, 0.5, 0.9, 0.1, 0.5, 0.9])
    assert binary_auroc(positive, scores) == pytest.approx(sk.roc_auc_score(positive, scores))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_class_absent_from_labels():
    labels = np.array([0, 1, 0, 1, 0])
    probs = np.array([[.6, .3, .1], [.2, .7, .1], [.1, .2, .7], [.5, .4, .1], [.8, .1, .1]])
    m = classification_metrics(labels, probs, ["a", "b", "c"])
    assert m["auroc_ovr"] is None and "c" in m["auroc_note"]
    preds = probs.argmax(axis=1)
    # balanced accuracy over the classes present in labels; macro F1 over labels + predictions
    assert m["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, preds))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(labels, preds, average="macro"))
    assert m["per_class"][2]["support"] == 0 and m["per_class"][2]["auroc"] is None
    assert m["per_class"][0]["auroc"] == pytest.approx(sk.roc_auc_score(labels == 0, probs[:, 0]))
    assert m["confusion_matrix"] == [[2, 0, 1], [1, 1, 0], [0, 0, 0]]
    text = format_metrics_table(m)
    assert "n/a" in text and "c" in text


def test_perfect_predictions():
    labels = [2, 0, 1, 1]
    m = classification_metrics(labels, np.eye(3)[labels])
    assert m["accuracy"] == m["balanced_accuracy"] == m["macro_f1"] == m["auroc_ovr"] == 1.0
    assert [row["class"] for row in m["per_class"]] == ["0", "1", "2"]


def test_input_errors():
    probs = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match=r"labels in \[0, 1\]"):
        classification_metrics([0, 1, 2], probs)
    with pytest.raises(ValueError, match=r"labels of shape \(3,\)"):
        classification_metrics([0, 1], probs)
    with pytest.raises(ValueError, match="N x num_classes"):
        classification_metrics([0, 1, 0], np.zeros(3))
    with pytest.raises(ValueError, match="2 class_names.*got 3"):
        classification_metrics([0, 1, 0], probs, ["a", "b", "c"])
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics([0, 1, 0], np.array([[np.nan, 1], [0, 1], [1, 0]]))
    with pytest.raises(ValueError, match="class probabilities"):
        classification_metrics([0, 1, 0], np.array([[2.0, 1], [0, 1], [1, 0]]))


def test_format_metrics_table():
    labels, probs = _random_case(5, n=50, k=3)
    m = classification_metrics(labels, probs, ["glioma", "meningioma", "none"])
    text = format_metrics_table(m)
    lines = text.splitlines()
    assert f"accuracy           {m['accuracy']:.4f}" in lines
    assert f"ECE (15 bins)      {m['ece']:.4f}" in lines and f"NLL                {m['nll']:.4f}" in lines
    assert any(line.startswith("meningioma") and f"{m['per_class'][1]['f1']:.4f}" in line
               for line in lines)
    cm_rows = [line for line in lines[lines.index(next(l for l in lines if l.startswith(
        "confusion"))) + 2:]]
    assert [list(map(int, row.split()[1:])) for row in cm_rows] == m["confusion_matrix"]
