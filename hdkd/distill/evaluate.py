"""Evaluation over a dataset split, gathered across ranks: labels, logits, loss."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .ddp import DistContext, ShardSampler


def eval_loader(dataset: Dataset, batch_size: int, ctx: DistContext, workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      sampler=ShardSampler(len(dataset), ctx.rank, ctx.world_size),
                      pin_memory=ctx.device.type == "cuda")


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, ctx: DistContext,
            autocast=contextlib.nullcontext, channels_last: bool = False):
    """(labels int64 [N], logits float64 [N, classes], mean cross-entropy) over the whole split,
    every sample exactly once across ranks, in the dataset's order (loader from eval_loader).
    The model is put in eval mode (the HDKD student then predicts with the mean of its two
    heads) and restored afterwards."""
    was_training = model.training
    model.eval()
    labels, logit_batches, loss_sum = [], [], 0.0
    try:
        for x, y in loader:
            x = x.to(ctx.device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.as_tensor(y).to(ctx.device)
            with autocast():
                logits = model(x)
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            labels.append(y.cpu())
            logit_batches.append(logits.double().cpu())
    finally:
        model.train(was_training)
    local = (torch.cat(labels).numpy() if labels else np.zeros(0, np.int64),
             torch.cat(logit_batches).numpy() if logit_batches else None, loss_sum)
    parts = ctx.all_gather(local)
    # rank r evaluated items r, r + world, ... (ShardSampler): put them back in dataset order
    n = sum(len(p[0]) for p in parts)
    order = np.concatenate([np.arange(r, n, len(parts)) for r in range(len(parts))])
    all_labels = np.empty(n, np.int64)
    all_labels[order] = np.concatenate([p[0] for p in parts])
    all_logits = np.concatenate([p[1] for p in parts if p[1] is not None])
    all_logits[order] = all_logits.copy()
    total = sum(p[2] for p in parts)
    return all_labels, all_logits, total / max(n, 1)


def scaled_metrics(labels: np.ndarray, logits: np.ndarray, classes,
                   temperature: float = 1.0) -> dict:
    """classification_metrics of softmax(logits / temperature), plus "temperature"; with a
    temperature other than 1 also "uncalibrated": the calibration metrics at temperature 1, so
    that a report shows them before and after the scaling."""
    from ..metrics import calibration_metrics, classification_metrics
    from .temperature import scaled_probabilities

    metrics = classification_metrics(labels, scaled_probabilities(logits, temperature), classes)
    metrics["temperature"] = float(temperature)
    if temperature != 1.0:
        metrics["uncalibrated"] = calibration_metrics(labels, scaled_probabilities(logits))
    return metrics


def predictions_csv(labels: np.ndarray, probs: np.ndarray, classes, images) -> str:
    """One CSV row per image: its name (path or index), true and predicted class, whether they
    agree, the predicted class's probability and every class's."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "label", "predicted", "correct", "confidence",
                     *(f"prob_{c}" for c in classes)])
    preds = probs.argmax(axis=1)
    for image, y, p, row in zip(images, labels, preds, probs):
        writer.writerow([image, classes[y], classes[p], int(y == p), f"{row[p]:.6f}",
                         *(f"{v:.6f}" for v in row)])
    return buf.getvalue()
