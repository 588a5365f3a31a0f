"""The learning rate of every epoch equals the original script's: timm's CosineLRScheduler built
by create_scheduler and stepped with scheduler.step(epoch) after each epoch."""
from __future__ import annotations

import argparse
import math

import pytest
import torch

from hdkd.distill.schedule import EpochSchedule


def _optimizer(lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def original_lrs(epochs: int, lr: float, warmup_epochs: int) -> list[float]:
    """The lr each epoch trains at in the original script's loop."""
    scheduler_factory = pytest.importorskip("timm.scheduler.scheduler_factory")
    args = argparse.Namespace(sched="cosine", epochs=epochs, lr=lr, min_lr=2e-5, warmup_lr=2e-5,
                              warmup_epochs=warmup_epochs, cooldown_epochs=10, decay_epochs=30,
                              decay_rate=0.1, lr_noise=None)
    opt = _optimizer(lr)
    scheduler, _ = scheduler_factory.create_scheduler(args, opt)
    lrs = []
    for epoch in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])  # what train_one_epoch uses
        scheduler.step(epoch)
    return lrs


@pytest.mark.parametrize("epochs,warmup", [(200, 5), (12, 5), (7, 0), (3, 5)])
def test_every_epoch_matches_timm(epochs, warmup):
    opt = _optimizer(5e-5)
    schedule = EpochSchedule(opt, "cosine", 5e-5, epochs, warmup, 2e-5, 2e-5)
    ours = [schedule.set_epoch(e) for e in range(epochs)]
    assert ours == pytest.approx(original_lrs(epochs, 5e-5, warmup), rel=1e-12, abs=0)
    assert opt.param_groups[0]["lr"] == ours[-1]


def test_default_recipe_lag_and_no_restart():
    s = EpochSchedule(_optimizer(5e-5), "cosine", 5e-5, 200, 5, 2e-5, 2e-5)
    assert s.lr_at(0) == s.lr_at(1) == pytest.approx(2e-5)
    assert s.lr_at(2) == pytest.approx(2e-5 + 3e-5 / 5)
    # the cosine counts from t = 0: right after the warm-up it is already below the peak
    assert s.lr_at(6) < 5e-5 and s.lr_at(6) == pytest.approx(
        2e-5 + 1.5e-5 * (1 + math.cos(math.pi * 5 / 200)))


def test_constant_schedule_and_resume_checks():
    s = EpochSchedule(_optimizer(1e-3), "constant", 1e-3, 10)
    assert {s.lr_at(e) for e in range(10)} == {1e-3}
    cos = EpochSchedule(_optimizer(5e-5), "cosine", 5e-5, 200, 5, 2e-5, 2e-5)
    cos.set_epoch(7)
    resumed = EpochSchedule(_optimizer(5e-5), "cosine", 5e-5, 200, 5, 2e-5, 2e-5)
    resumed.load_state_dict(cos.state_dict())
    assert resumed.optimizer.param_groups[0]["lr"] == cos.lr_at(7)
    other = EpochSchedule(_optimizer(5e-5), "cosine", 5e-5, 100, 5, 2e-5, 2e-5)
    with pytest.raises(ValueError, match="epochs: checkpoint 200 vs now 100"):
        other.load_state_dict(cos.state_dict())
    written_before_the_fix = {k: v for k, v in cos.state_dict().items() if k != "rule"}
    with pytest.raises(ValueError, match="one epoch ahead"):
        resumed.load_state_dict(written_before_the_fix)
