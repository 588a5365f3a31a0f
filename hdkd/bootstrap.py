"""Bootstrap confidence intervals for the headline metrics of a test set.

Percentile intervals over resamples of the test images drawn with replacement (labels and
probabilities resampled together). scikit-learn's metrics score one resample per call, and at
1000 resamples their per-call checks dominate (seconds even for 30 images), and
scipy.stats.bootstrap cannot skip the resamples in which macro AUROC is undefined (a class drawn
zero times); so the resamples are scored together here, from batched confusion matrices and ranks,
with the definitions of hdkd.metrics.classification_metrics (tests check them against
scikit-learn).
"""
from __future__ import annotations

import numpy as np

BOOTSTRAP_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_ovr")
RESAMPLES, LEVEL = 1000, 0.95
_CHUNK_VALUES = 2_000_000  # resamples are scored in chunks of about this many drawn images


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape), where=den > 0)


def resample_metrics(labels: np.ndarray, probs: np.ndarray, idx: np.ndarray) -> dict:
    """The four metrics of each resample (row of idx, indices into labels/probs): {name: array
    of one value per resample}; auroc_ovr is NaN where a class is absent or alone."""
    r, n = idx.shape
    k = probs.shape[1]
    y, pred = labels[idx], probs.argmax(axis=1)[idx]
    cells = (np.arange(r)[:, None] * k * k + y * k + pred).ravel()
    cm = np.bincount(cells, minlength=r * k * k).reshape(r, k, k)
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    recall, precision = _ratio(tp, support), _ratio(tp, predicted)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present, seen = support > 0, (support > 0) | (predicted > 0)
    return {"accuracy": tp.sum(axis=1) / n,
            "balanced_accuracy": (recall * present).sum(axis=1) / present.sum(axis=1),
            "macro_f1": (f1 * seen).sum(axis=1) / seen.sum(axis=1),
            "auroc_ovr": np.mean([_auroc(y == c, probs[idx, c]) for c in range(k)], axis=0)}


def _auroc(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per row: P(score of a positive > score of a negative), ties half (Mann-Whitney U from
    average ranks); NaN for a row without positives or negatives."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)
    n_pos = positive.sum(axis=1).astype(np.float64)
    n_neg = positive.shape[1] - n_pos
    u = (ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def bootstrap_intervals(labels, probs, resamples: int = RESAMPLES, seed: int = 0,
                        level: float = LEVEL) -> dict:
    """{metric: {"low", "high", "resamples"}} for accuracy, balanced_accuracy, macro_f1 and
    auroc_ovr, plus "level", "method" and "seed". "resamples" counts those the metric was
    defined on (AUROC skips resamples missing a class); low/high are None when none was."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if resamples < 1:
        raise ValueError(f"bootstrap: expected at least 1 resample, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap: expected a confidence level in (0, 1), got {level}")
    n = len(labels)
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_VALUES // max(n, 1))
    parts = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, (min(chunk, resamples - start), n))
        parts.append(resample_metrics(labels, probs, idx))
    tail = 100 * (1 - level) / 2
    out: dict = {"level": level, "method": "percentile bootstrap", "resamples": resamples,
                 "seed": seed}
    for name in BOOTSTRAP_METRICS:
        values = np.concatenate([p[name] for p in parts])
        defined = values[~np.isnan(values)]
        low, high = np.percentile(defined, [tail, 100 - tail]) if len(defined) else (None, None)
        out[name] = {"low": None if low is None else float(low),
                     "high": None if high is None else float(high),
                     "resamples": len(defined)}
    return out
