"""Per-epoch learning-rate schedules of the original recipe: constant (teacher) and timm's cosine
with linear warm-up (student and HDKD), applied on the epochs the original script applies them."""
from __future__ import annotations

import math

from torch.optim import Optimizer

KINDS = ("constant", "cosine")
# Recorded in checkpoints: a last.pt written under the earlier rule (the cosine one epoch ahead
# and restarted after the warm-up) must not silently continue under this one.
COSINE_RULE = "timm CosineLRScheduler, step(epoch) after each epoch"


def timm_cosine_lr(t: int, base_lr: float, epochs: int, warmup_epochs: int, warmup_lr: float,
                   min_lr: float) -> float:
    """timm's CosineLRScheduler value at t as create_scheduler builds it from the original's
    arguments: t_initial = epochs, warmup_t = warmup_epochs from warmup_lr_init = warmup_lr, lr_min
    = min_lr, no warm-up prefix (the cosine counts from t = 0, not from the warm-up's end), one
    cycle (min_lr after it)."""
    if t < warmup_epochs:
        return warmup_lr + t * (base_lr - warmup_lr) / warmup_epochs
    if t >= epochs:
        return min_lr
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * t / epochs))


class EpochSchedule:
    """Sets the learning rate of every parameter group at the start of each epoch.

    cosine: the original script builds timm's scheduler (whose constructor sets the warm-up's
    first value) and calls scheduler.step(epoch) after each epoch, so epoch 0 and epoch 1 both
    train at the value for t = 0, and epoch e > 0 at the value for t = e - 1 (timm_cosine_lr).
    The lr is a pure function of the epoch, so resuming needs only the epoch; state_dict() still
    records the settings so a resume with different ones is refused instead of silently changing
    the run.
    """

    def __init__(self, optimizer: Optimizer, kind: str, base_lr: float, epochs: int,
                 warmup_epochs: int = 0, warmup_lr: float = 0.0, min_lr: float = 0.0):
        if kind not in KINDS:
            raise ValueError(f"unknown lr schedule {kind!r}; expected one of: {', '.join(KINDS)}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        cosine = kind == "cosine"
        self.optimizer = optimizer
        self.settings = dict(kind=kind, base_lr=float(base_lr), epochs=int(epochs),
                             warmup_epochs=int(warmup_epochs) if cosine else 0,
                             warmup_lr=float(warmup_lr), min_lr=float(min_lr),
                             rule=COSINE_RULE if cosine else None)
        self.epoch = 0

    def lr_at(self, epoch: int) -> float:
        s = self.settings
        if s["kind"] == "constant":
            return s["base_lr"]
        return timm_cosine_lr(max(epoch - 1, 0), s["base_lr"], s["epochs"], s["warmup_epochs"],
                              s["warmup_lr"], s["min_lr"])

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
        if saved["rule"] != self.settings["rule"]:
            raise ValueError("cannot resume: the checkpoint was written by an hdkd whose cosine "
                             "schedule ran one epoch ahead of the original recipe and restarted "
                             "after the warm-up; continuing it under the corrected schedule would "
                             "change the run mid-way. Start a new run (or finish it with the hdkd "
                             "version that wrote it)")
        if saved != self.settings:
            diff = ", ".join(f"{k}: checkpoint {saved[k]!r} vs now {self.settings[k]!r}"
                             for k in self.settings if saved[k] != self.settings[k])
            raise ValueError(f"cannot resume: the lr schedule differs from the checkpoint's ({diff})")
        self.set_epoch(int(state["epoch"]))
