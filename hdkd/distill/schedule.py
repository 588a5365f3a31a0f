"""Per-epoch learning-rate schedules of the original recipe: constant (teacher) and linear warm-up
followed by a cosine decay to a floor (student and HDKD)."""
from __future__ import annotations

import math

from torch.optim import Optimizer

KINDS = ("constant", "cosine")


class EpochSchedule:
    """Sets the learning rate of every parameter group at the start of each epoch.

    cosine: epochs [0, warmup_epochs) go linearly from warmup_lr towards base_lr; the remaining
    epochs follow a half cosine from base_lr down to min_lr. The lr is a pure function of the epoch,
    so resuming needs only the epoch; state_dict() still records the settings so a resume with
    different ones is refused instead of silently changing the run.
    """

    def __init__(self, optimizer: Optimizer, kind: str, base_lr: float, epochs: int,
                 warmup_epochs: int = 0, warmup_lr: float = 0.0, min_lr: float = 0.0):
        if kind not in KINDS:
            raise ValueError(f"unknown lr schedule {kind!r}; expected one of: {', '.join(KINDS)}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.optimizer = optimizer
        self.settings = dict(kind=kind, base_lr=float(base_lr), epochs=int(epochs),
                             warmup_epochs=int(warmup_epochs) if kind == "cosine" else 0,
                             warmup_lr=float(warmup_lr), min_lr=float(min_lr))
        self.epoch = 0

    def lr_at(self, epoch: int) -> float:
        s = self.settings
        if s["kind"] == "constant":
            return s["base_lr"]
        warm = s["warmup_epochs"]
        if epoch < warm:
            return s["warmup_lr"] + (s["base_lr"] - s["warmup_lr"]) * epoch / warm
        span = max(s["epochs"] - warm, 1)
        progress = min((epoch - warm) / span, 1.0)
        return s["min_lr"] + 0.5 * (s["base_lr"] - s["min_lr"]) * (1 + math.cos(math.pi * progress))

    def set_epoch(self, epoch: int) -> float:
        """Apply epoch's lr to the optimizer and return it."""
        self.epoch = epoch
        lr = self.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {**self.settings, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        saved = {k: state.get(k) for k in self.settings}
        if saved != self.settings:
            diff = ", ".join(f"{k}: checkpoint {saved[k]!r} vs now {self.settings[k]!r}"
                             for k in self.settings if saved[k] != self.settings[k])
            raise ValueError(f"cannot resume: the lr schedule differs from the checkpoint's ({diff})")
        self.set_epoch(int(state["epoch"]))
