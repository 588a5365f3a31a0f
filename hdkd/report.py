"""Plots (training curves, confusion matrix, reliability diagram) and the markdown report of
`hdkd demo`.

matplotlib is imported lazily with the Agg backend, so nothing here needs a display.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Loss (train and validation) and validation accuracy / macro-F1 per epoch, one PNG."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    distilled = bool(history) and "train_base" in history[0]
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o",
                 label="train (total objective)" if distilled else "train")
    if distilled:  # the KD objective is on another scale than cross-entropy: show both
        ax_loss.plot(epochs, [r["train_base"] for r in history], marker="o",
                     label="train cross-entropy")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], marker="o",
                 label="validation cross-entropy")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss", yscale="log")
    ax_loss.legend()
    for key, label in (("val_accuracy", "accuracy"), ("val_macro_f1", "macro-F1"),
                       ("val_balanced_accuracy", "balanced accuracy")):
        if history and key in history[0]:
            ax_metric.plot(epochs, [r[key] for r in history], marker="o", label=label)
    ax_metric.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1.02))
    ax_metric.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confusion(matrix, classes: Sequence[str], path: str | os.PathLike,
                   title: str = "confusion matrix") -> Path:
    """Counts, true class down the rows and predicted class across the columns."""
    import numpy as np

    plt = _pyplot()
    m = np.asarray(matrix)
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), [str(c) for c in classes], rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set(xlabel="predicted", ylabel="true", title=title)
    threshold = m.max() / 2 if m.size else 0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if m[i, j] > threshold else "black")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_reliability(diagrams: dict, path: str | os.PathLike, title: str = "") -> Path:
    """Reliability diagram: per confidence bin, accuracy against mean confidence (the diagonal is
    perfect calibration), one line per entry of diagrams (label -> hdkd.metrics.reliability_bins
    result, e.g. before and after temperature scaling), with the bins' sample counts below.
    Written atomically."""
    import io

    import numpy as np

    from .distill.checkpoint import write_bytes_atomic

    plt = _pyplot()
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5, 6), sharex=True,
                                       gridspec_kw={"height_ratios": (3, 1)})
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfectly calibrated")
    for i, (label, bins) in enumerate(diagrams.items()):
        used = np.asarray(bins["count"]) > 0
        ax.plot(np.asarray(bins["confidence"])[used], np.asarray(bins["accuracy"])[used],
                marker="o", label=label)
        edges = np.asarray(bins["edges"])
        width = (edges[1] - edges[0]) / len(diagrams)
        ax_count.bar(edges[:-1] + width * i, bins["count"], width=width, align="edge", label=label)
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02), title=title or "reliability")
    ax.legend(loc="upper left")
    ax_count.set(xlabel="confidence (highest class probability)", ylabel="images")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path = Path(path)
    write_bytes_atomic(buf.getvalue(), path)
    return path


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """columns: (key, header, format spec); returns a GitHub markdown table."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(format(r[k], f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def write_report(path: str | os.PathLike, title: str, intro: str, table: str,
                 images: Sequence[tuple[str, str]], notes: Sequence[str] = ()) -> Path:
    """A markdown report: title, intro, the results table, notes, then each (caption, image path
    relative to the report)."""
    lines = [f"# {title}", "", intro, "", table, ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    for caption, image in images:
        lines += [f"## {caption}", "", f"![{caption}]({image})", ""]
    path = Path(path)
    path.write_text("\n".join(lines))
    return path
