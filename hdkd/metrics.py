"""Classification metrics for (often imbalanced) medical data, and how well the probabilities are
calibrated (expected calibration error, Brier score, negative log-likelihood)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _check_inputs(labels, probs, class_names):
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"classification_metrics: expected probs of shape N x num_classes "
                         f"(num_classes >= 2), got {probs.shape}")
    if labels.ndim != 1 or len(labels) != len(probs):
        raise ValueError(f"classification_metrics: expected labels of shape ({len(probs)},) "
                         f"to match probs {probs.shape}, got {labels.shape}")
    if len(labels) == 0:
        raise ValueError("classification_metrics: labels is empty")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"classification_metrics: expected integer class labels, got "
                         f"{labels.dtype}")
    k = probs.shape[1]
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"classification_metrics: expected labels in [0, {k - 1}] for "
                         f"{k} classes, got values from {labels.min()} to {labels.max()}")
    if not np.isfinite(probs).all():
        raise ValueError("classification_metrics: probs holds NaN or infinite values")
    if (probs < 0).any() or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("classification_metrics: every row of probs must be class "
                         "probabilities (>= 0, summing to 1), e.g. a softmax of the logits")
    names = [str(i) for i in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"classification_metrics: expected {k} class_names (one per column of "
                         f"probs), got {len(names)}")
    return labels.astype(np.int64), probs, names


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (scikit-learn's zero_division=0)."""
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den > 0)


def binary_auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties counted
    half (the Mann-Whitney U statistic with average ranks)."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average rank within each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


CALIBRATION_BINS = 15


def reliability_bins(labels, probs, bins: int = CALIBRATION_BINS) -> dict:
    """The top-label reliability diagram: predictions grouped by their confidence (max prob) into
    `bins` equal-width bins (lo, hi] of [0, 1]; per bin the count, mean confidence and accuracy
    (NaN for an empty bin). No library bins multi-class confidences this way (scikit-learn's
    calibration_curve is binary only)."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, confidence, minlength=bins) / count
        accuracy = np.bincount(which, correct, minlength=bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(labels, probs, bins: int = CALIBRATION_BINS) -> float:
    """sum over bins of (bin share of samples) * |accuracy - mean confidence| (Guo et al. 2017)."""
    r = reliability_bins(labels, probs, bins)
    used = r["count"] > 0
    gaps = np.abs(r["accuracy"][used] - r["confidence"][used])
    return float((r["count"][used] * gaps).sum() / r["count"].sum())


def calibration_metrics(labels, probs, bins: int = CALIBRATION_BINS) -> dict:
    """ece (top-label, `bins` bins), brier (mean over samples of the squared distance between the
    probability vector and the one-hot label, summed over classes: 0 best, 2 worst) and nll (mean
    negative log-likelihood of the true class)."""
    from sklearn.metrics import brier_score_loss, log_loss

    classes = list(range(np.asarray(probs).shape[1]))
    return {"ece": expected_calibration_error(labels, probs, bins),
            "brier": float(brier_score_loss(labels, probs, labels=classes, scale_by_half=False)),
            "nll": float(log_loss(labels, probs, labels=classes))}


def classification_metrics(labels: Sequence[int], probs, class_names=None) -> dict:
    """Metrics of predictions argmax(probs) against integer labels.

    probs: N x K class probabilities (rows summing to 1). Returns
    accuracy, balanced_accuracy (mean recall over the classes present in labels), macro_f1 (mean
    F1 over the classes present in labels or predictions, as scikit-learn), per_class (class,
    precision, recall, f1, support, auroc), auroc_ovr (macro one-vs-rest, or None with an
    "auroc_note" when a class has no samples or all of them), confusion_matrix (rows: true
    class, columns: predicted), num_samples and the calibration_metrics (ece, brier, nll).
    """
    labels, probs, names = _check_inputs(labels, probs, class_names)
    k = probs.shape[1]
    preds = probs.argmax(axis=1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision, recall = _divide(tp, predicted), _divide(tp, support)
    f1 = _divide(2 * precision * recall, precision + recall)
    present = support > 0
    seen = present | (predicted > 0)

    aurocs = [binary_auroc(labels == c, probs[:, c]) if 0 < support[c] < len(labels) else None
              for c in range(k)]
    missing = [names[c] for c in range(k) if aurocs[c] is None]
    out = {
        "num_samples": int(len(labels)),
        "accuracy": float(tp.sum() / len(labels)),
        "balanced_accuracy": float(recall[present].mean()),
        "macro_f1": float(f1[seen].mean()),
        "auroc_ovr": None if missing else float(np.mean(aurocs)),
        "per_class": [{"class": names[c], "precision": float(precision[c]),
                       "recall": float(recall[c]), "f1": float(f1[c]),
                       "support": int(support[c]), "auroc": aurocs[c]} for c in range(k)],
        "confusion_matrix": cm.tolist(),
        **calibration_metrics(labels, probs),
    }
    if missing:
        out["auroc_note"] = (f"one-vs-rest AUROC is undefined: labels have no samples (or only "
                             f"samples) of class {', '.join(missing)}")
    return out


CALIBRATION_LABELS = {"ece": f"ECE ({CALIBRATION_BINS} bins)", "brier": "Brier score",
                      "nll": "NLL"}


def _calibration_lines(metrics: dict) -> list[str]:
    """The calibration metrics; after temperature scaling with the values before it alongside."""
    before = metrics.get("uncalibrated")
    lines = [f"temperature        {metrics['temperature']:.4f} (fitted on the validation split)"
             ] if before else []
    for key, label in CALIBRATION_LABELS.items():
        if key in metrics:
            lines.append(f"{label:<19}{metrics[key]:.4f}" +
                         (f" (before temperature scaling {before[key]:.4f})" if before else ""))
    return lines


def format_metrics_table(metrics: dict) -> str:
    """A plain-text report of classification_metrics' result: summary, per-class table and
    confusion matrix."""
    auroc = metrics.get("auroc_ovr")
    auroc_text = f"{auroc:.4f}" if auroc is not None else f"n/a ({metrics.get('auroc_note', '')})"
    intervals = metrics.get("confidence_intervals")

    def ci(key: str) -> str:
        """ '  [low, high]' with the level, when the metrics carry bootstrap intervals."""
        if not intervals or intervals[key]["low"] is None:
            return ""
        return (f"  [{intervals[key]['low']:.4f}, {intervals[key]['high']:.4f}] "
                f"{intervals['level']:.0%} CI")

    lines = [f"samples            {metrics['num_samples']}" if "num_samples" in metrics else None,
             f"accuracy           {metrics['accuracy']:.4f}{ci('accuracy')}",
             f"balanced accuracy  {metrics['balanced_accuracy']:.4f}{ci('balanced_accuracy')}",
             f"macro F1           {metrics['macro_f1']:.4f}{ci('macro_f1')}",
             f"AUROC (OvR, macro) {auroc_text}{ci('auroc_ovr') if auroc is not None else ''}",
             *_calibration_lines(metrics), ""]
    lines = [line for line in lines if line is not None]
    rows = metrics["per_class"]
    width = max(5, *(len(r["class"]) for r in rows))
    lines.append(f"{'class':<{width}}  precision  recall      f1  support    auroc")
    for r in rows:
        auc = f"{r['auroc']:.4f}" if r.get("auroc") is not None else "n/a"
        lines.append(f"{r['class']:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  "
                     f"{r['f1']:6.4f}  {r['support']:7d}  {auc:>7}")
    cm = metrics["confusion_matrix"]
    cell = max(4, width, *(len(str(v)) for row in cm for v in row))
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)",
              " " * width + "".join(f"  {r['class']:>{cell}}" for r in rows)]
    for r, row in zip(rows, cm):
        lines.append(f"{r['class']:<{width}}" + "".join(f"  {v:>{cell}}" for v in row))
    return "\n".join(lines)
