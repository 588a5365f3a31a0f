"""The training loop for the teacher, the student from scratch and HDKD.

Each HDKD step runs the frozen teacher once (eval mode, no grad) and the student once, both through
forward_with_features, and feeds HDKDLoss with the logits and the three stage features of each.
After every epoch: validation, OUT/log.jsonl, OUT/last.pt (full state, written atomically) and
OUT/best.pt when the validation metric improved. The test split is only used once, at the end,
with the best weights. train() guards OUT for the run (hdkd.distill.run_folder): an earlier run is
never replaced by accident, one process writes at a time, and Ctrl-C or SIGTERM stops cleanly with
last.pt holding the step reached.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from ..data.splits import named_classes
from ..models import create_model
from . import checkpoint as ckpt
from .config import TrainConfig
from .ddp import SYNC_BN_UNSUPPORTED, DistContext
from .evaluate import eval_loader, predict, scaled_metrics
from .features import forward_with_features
from .run_folder import RunFolder, StopRequest
from .schedule import EpochSchedule

LOG_NAME, LAST_NAME, BEST_NAME = "log.jsonl", "last.pt", "best.pt"
# what a run writes besides the run files; --overwrite removes these too
OUTPUT_NAMES = ("test_metrics.json", "val_metrics.json", "curves.png", "confusion_matrix.png",
                "reliability.png")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run at a safe point: OUT/last.pt holds the state reached (the
    last finished epoch, and in a single-process run the steps of the interrupted epoch), from
    which --resume continues exactly."""

    def __init__(self, signal_name: str, out: Path, epochs_done: int, steps_done: int = 0):
        self.signal_name, self.out = signal_name, out
        self.epochs_done, self.steps_done = epochs_done, steps_done
        self.exit_code = 128 + int(getattr(signal, signal_name))
        if steps_done:
            saved = (f"{out / LAST_NAME} holds epoch {epochs_done} and {steps_done} step(s) of "
                     f"epoch {epochs_done + 1}")
        elif epochs_done:
            saved = f"{out / LAST_NAME} holds epoch {epochs_done}"
        else:
            saved = "no step had finished, so there is nothing to resume"
        super().__init__(f"{signal_name} received: training stopped; {saved}")


class _StopNow(Exception):
    """Raised inside an epoch when a stop was requested (caught by fit): the steps done and the
    epoch's running loss sums so far."""

    def __init__(self, steps: int, sums: dict, count: int):
        super().__init__()
        self.steps, self.sums, self.count = steps, sums, count


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _scalar_metrics(metrics: dict, prefix: str) -> dict:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)}


class Trainer:
    """Trainer(config).fit() -> summary dict. `splits` (an hdkd.data.DatasetSplits) replaces
    loading config.data; `log` receives one-line progress messages (rank 0 only)."""

    def __init__(self, config: TrainConfig, splits=None, resume: Optional[str] = None,
                 log: Callable[[str], None] = print):
        self.cfg = config.resolved()
        if self.cfg.sync_bn:
            raise ValueError(SYNC_BN_UNSUPPORTED)
        self.ctx = DistContext.from_env(self.cfg.device)
        if self.cfg.balanced_sampler and self.ctx.enabled:
            raise ValueError("--balanced-sampler is not supported with more than one process yet; "
                             "use it in single-process runs")
        self._log = log if self.ctx.is_main else (lambda msg: None)
        self.out = Path(self.cfg.out)
        seed_everything(self.cfg.seed)
        self.splits = splits if splits is not None else self._load_data()
        if len(self.splits.train) < self.cfg.batch_size:
            raise ValueError(f"batch_size {self.cfg.batch_size} is larger than the training split "
                             f"({len(self.splits.train)} images)")
        self.classes = named_classes(self.splits.classes, self.cfg.classes)
        self.raw_model = create_model(self.cfg.model, num_classes=len(self.classes),
                                      img_size=self.cfg.img_size, backend=self.cfg.backend)
        self.raw_model.to(self.ctx.device)
        if self.cfg.channels_last:
            self.raw_model.to(memory_format=torch.channels_last)
        self.teacher = self._load_teacher() if self.cfg.model == "hdkd" else None
        self.loss_fn = self._make_loss()
        self.optimizer = self._make_optimizer()
        self.schedule = EpochSchedule(self.optimizer, self.cfg.schedule, self.cfg.lr,
                                      self.cfg.epochs, self.cfg.warmup_epochs, self.cfg.warmup_lr,
                                      self.cfg.min_lr)
        fp16 = self.cfg.amp == "fp16"
        self.scaler = torch.amp.GradScaler(self.ctx.device.type, enabled=fp16)
        self.ema = (torch.optim.swa_utils.AveragedModel(
            self.raw_model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(
                self.cfg.ema_decay), use_buffers=True)
            if self.cfg.ema_decay else None)
        self.model = self.ctx.wrap(self.raw_model)
        if self.cfg.compile:
            self.model = torch.compile(self.model)
        self.start_epoch, self.history = 0, []
        # a resume inside an epoch: its steps done, running loss sums and generator states
        self.start_step, self.partial, self.partial_rng = 0, None, None
        self.stop: Optional[StopRequest] = None  # set by train(); None: never stops early
        self.best = {"metric": self.cfg.select_metric, "value": None, "epoch": None}
        if resume:
            self._resume(resume)
        # Each rank draws its own augmentation stream; rank 0's equals a single-process run.
        if not resume:
            seed_everything(self.cfg.seed + self.ctx.rank)

    # ------------------------------------------------------------------ setup
    def _load_data(self):
        from ..data import load_dataset, read_smote_targets

        c = self.cfg
        targets = read_smote_targets(c.smote_targets) if c.smote_targets else None
        return load_dataset(c.data, c.img_size, seed=c.seed, val_fraction=c.val_fraction,
                            test_fraction=c.test_fraction, smote=c.smote, augment=c.augment,
                            smote_targets=targets, folds=c.folds, fold=c.fold, groups=c.groups)

    def _load_teacher(self) -> nn.Module:
        teacher, meta = ckpt.load_model(self.cfg.teacher, "hdkd_teacher", what="teacher checkpoint",
                                        num_classes=len(self.classes), img_size=self.cfg.img_size,
                                        backend=self.cfg.backend)
        if meta["classes"] is not None and list(meta["classes"]) != self.classes:
            raise ValueError(f"teacher checkpoint {self.cfg.teacher!r} was trained on classes "
                             f"{meta['classes']}, but the data has {self.classes}")
        teacher.to(self.ctx.device).eval().requires_grad_(False)
        if self.cfg.channels_last:
            teacher.to(memory_format=torch.channels_last)
        return torch.compile(teacher) if self.cfg.compile else teacher

    def _make_loss(self):
        if self.cfg.model != "hdkd":
            return None
        from . import HDKDLoss

        c = self.cfg
        return HDKDLoss(alpha=c.alpha, tau=c.tau, kind=c.distillation,
                        feature_weight=c.feature_weight, beta=c.beta)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.cfg
        cls = torch.optim.Adam if c.optimizer == "adam" else torch.optim.AdamW
        return cls(self.raw_model.parameters(), lr=c.lr, weight_decay=c.weight_decay)

    def _autocast(self):
        if self.cfg.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.ctx.device.type, dtype=dtype)

    def _train_loader(self, epoch: int) -> DataLoader:
        """A loader whose order and worker seeds depend only on (seed, epoch): exact resume."""
        c, data = self.cfg, self.splits.train
        gen = torch.Generator().manual_seed(c.seed * 100_003 + epoch)
        if self.ctx.enabled:
            sampler = DistributedSampler(data, self.ctx.world_size, self.ctx.rank, shuffle=True,
                                         seed=c.seed, drop_last=True)
            sampler.set_epoch(epoch)
        elif c.balanced_sampler:
            from ..data import class_balanced_sampler

            sampler = class_balanced_sampler(self.splits.train_labels, c.seed * 100_003 + epoch)
        else:
            sampler = RandomSampler(data, generator=gen)
        return DataLoader(data, batch_size=c.batch_size, sampler=sampler, drop_last=True,
                          num_workers=c.workers, generator=gen,
                          pin_memory=self.ctx.device.type == "cuda")

    # ------------------------------------------------------------------ one step
    def compute_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The training loss of one batch and its parts (floats) for the log."""
        with self._autocast():
            if self.teacher is None:
                loss = F.cross_entropy(self.model(x).float(), y)
                return loss, {}
            with torch.no_grad():
                t_logits, t_feats = forward_with_features(self.teacher, x)
            s_out, s_feats = forward_with_features(self.model, x)
            loss = self.loss_fn(s_out, s_feats, t_logits, t_feats, y)
        return loss, dict(self.loss_fn.last_parts)

    def _step(self, x, y, epoch: int, step: int) -> tuple[float, dict]:
        loss, parts = self.compute_loss(x, y)
        value = loss.item()
        if not math.isfinite(value):
            kept = (f"{self.out / LAST_NAME} (after epoch {self.epochs_done})"
                    if self.epochs_done else "none yet (it failed in the first epoch)")
            raise NonFiniteLossError(
                f"training loss is {value} at epoch {epoch + 1}, step {step + 1}; stopped before "
                f"updating the weights. Last good checkpoint: {kept}. Try a lower --lr, "
                f"--clip-grad, or --amp none / bf16 instead of fp16")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.raw_model)
        return value, parts

    # ------------------------------------------------------------------ epochs
    def _train_epoch(self, epoch: int, start_step: int = 0, partial: Optional[dict] = None,
                     rng: Optional[dict] = None) -> dict:
        """One epoch; from start_step on when resuming inside it: the batches before are loaded
        and dropped (so that the loader's workers, seeded per epoch, are where they were), then
        the generators are restored to their state at the interruption (rng)."""
        from tqdm import tqdm

        self.model.train()
        loader = self._train_loader(epoch)
        show = self.cfg.progress if self.cfg.progress is not None else sys.stderr.isatty()
        bar = tqdm(loader, desc=f"{self.cfg.model} epoch {epoch + 1}/{self.cfg.epochs}",
                   disable=not (show and self.ctx.is_main), leave=False, dynamic_ncols=True)
        sums: dict[str, float] = dict(partial["sums"]) if partial else {}
        count = int(partial["count"]) if partial else 0
        for step, (x, y) in enumerate(bar):
            if step < start_step:
                if step == start_step - 1:
                    ckpt.set_rng_state(rng)  # before the next batch is drawn
                continue
            x = x.to(self.ctx.device, non_blocking=True)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.as_tensor(y).to(self.ctx.device, non_blocking=True)
            value, parts = self._step(x, y, epoch, step)
            n = x.shape[0]
            count += n
            for k, v in {"loss": value, **{p: parts[p] for p in parts if p != "total"}}.items():
                sums[k] = sums.get(k, 0.0) + v * n
            bar.set_postfix(loss=f"{value:.4f}")
            if not self.ctx.enabled and self._stop_requested():
                raise _StopNow(step + 1, sums, count)
        keys = sorted(sums)
        totals = self.ctx.sum(count, *(sums[k] for k in keys))
        return {f"train_{k}": totals[i + 1] / totals[0] for i, k in enumerate(keys)}

    def _eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.raw_model

    def _predict(self, dataset, model: Optional[nn.Module] = None):
        """(labels, logits, mean cross-entropy) of model (default: the evaluated weights)."""
        model = model or self._eval_model()
        self.ctx.broadcast_buffers(model)
        loader = eval_loader(dataset, self.cfg.batch_size, self.ctx, self.cfg.workers)
        return predict(model, loader, self.ctx, self._autocast, self.cfg.channels_last)

    def _evaluate(self, dataset, model: Optional[nn.Module] = None) -> tuple[dict, float]:
        from ..metrics import classification_metrics
        from .temperature import scaled_probabilities

        labels, logits, loss = self._predict(dataset, model)
        return classification_metrics(labels, scaled_probabilities(logits), self.classes), loss

    def _improved(self, record: dict) -> bool:
        key = self.cfg.select_metric
        value = record["val_loss"] if key == "val_loss" else record[f"val_{key}"]
        best = self.best["value"]
        better = best is None or (value < best if key == "val_loss" else value > best)
        if better:
            self.best = {"metric": key, "value": value, "epoch": record["epoch"]}
        return better

    def fit(self) -> dict:
        """Train from start_epoch to cfg.epochs, then evaluate best.pt on the test split."""
        c = self.cfg
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self._log(f"[{c.model}] {len(self.splits.train)} train / {len(self.splits.val)} val / "
                  f"{len(self.splits.test)} test images, {len(self.classes)} classes, "
                  f"device {self.ctx.device}, {self.ctx.world_size} process(es), "
                  f"epochs {self.start_epoch + 1}..{c.epochs}")
        self.epochs_done = self.start_epoch
        for epoch in range(self.start_epoch, c.epochs):
            t0 = time.perf_counter()
            lr = self.schedule.set_epoch(epoch)
            resuming = epoch == self.start_epoch and self.start_step
            try:
                train = self._train_epoch(epoch, *((self.start_step, self.partial,
                                                    self.partial_rng) if resuming else ()))
            except _StopNow as stop:
                state = self._full_state(self.epochs_done, [ckpt.rng_state()])
                state.update(step=stop.steps, epoch_partial={"sums": stop.sums,
                                                             "count": stop.count})
                ckpt.save_atomic(state, self.out / LAST_NAME)
                raise TrainingInterrupted(self.stop.requested, self.out, self.epochs_done,
                                          stop.steps) from None
            metrics, val_loss = self._evaluate(self.splits.val)
            record = {"epoch": epoch + 1, **train, "val_loss": val_loss,
                      **_scalar_metrics(metrics, "val_"), "lr": lr,
                      "seconds": time.perf_counter() - t0}
            self.history.append(record)
            improved = self._improved(record)
            rngs = self.ctx.all_gather(ckpt.rng_state())
            if self.ctx.is_main:
                self._write_epoch(record, improved, metrics, rngs)
            self.epochs_done = epoch + 1
            self._log(f"[{c.model}] epoch {epoch + 1}/{c.epochs}  train_loss "
                      f"{record['train_loss']:.4f}  val_loss {val_loss:.4f}  val_acc "
                      f"{record.get('val_accuracy', float('nan')):.4f}  lr {lr:.2e}  "
                      f"{record['seconds']:.1f}s" + ("  *best*" if improved else ""))
            self.ctx.barrier()
            # every process must agree to stop (torchrun signals each of them)
            if epoch + 1 < c.epochs and self.ctx.sum(float(self._stop_requested()))[0] > 0:
                raise TrainingInterrupted(self.stop.requested or "SIGTERM", self.out,
                                          self.epochs_done)
        return self._finish()

    def _stop_requested(self) -> bool:
        return self.stop is not None and self.stop.requested is not None

    # ------------------------------------------------------------------ files
    def _write_epoch(self, record: dict, improved: bool, metrics: dict, rngs: list) -> None:
        if improved:
            ckpt.save_atomic(ckpt.make_model_checkpoint(
                self.cfg.model, self._eval_model_plain(), self.classes, epoch=record["epoch"],
                val_metrics=metrics, config=self.cfg.to_dict()), self.out / BEST_NAME)
        ckpt.save_atomic(self._full_state(record["epoch"], rngs), self.out / LAST_NAME)
        lines = "".join(json.dumps(r) + "\n" for r in self.history)
        ckpt.write_text_atomic(lines, self.out / LOG_NAME)

    def _eval_model_plain(self) -> nn.Module:
        """The evaluated weights as a plain hdkd model (unwrapping the EMA container)."""
        if self.ema is None:
            return self.raw_model
        plain = copy.deepcopy(self.raw_model)
        plain.load_state_dict(self.ema.module.state_dict())
        return plain

    def _full_state(self, epochs_done: int, rngs: list) -> dict:
        """Everything --resume needs; rngs holds every rank's generator states."""
        return {
            **ckpt.make_model_checkpoint(self.cfg.model, self.raw_model, self.classes),
            "epoch": epochs_done, "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rngs, "world_size": self.ctx.world_size, "config": self.cfg.to_dict(),
            "best": dict(self.best), "history": list(self.history),
        }

    def _resume(self, path: str) -> None:
        state = ckpt.read_checkpoint(path)
        if not ckpt.is_hdkd_checkpoint(state) or "optimizer" not in state:
            raise ValueError(f"cannot resume from {path!r}: it is not a last.pt written by "
                             f"`hdkd train` (no optimizer / epoch state)")
        saved = state["config"]
        for key in ("model", "img_size", "batch_size", "seed", "optimizer", "amp", "distillation",
                    "folds", "fold", "groups"):
            if saved.get(key) != getattr(self.cfg, key):
                raise ValueError(f"cannot resume from {path!r}: {key} was {saved.get(key)!r} "
                                 f"there but is {getattr(self.cfg, key)!r} now")
        if list(state["classes"]) != self.classes:
            raise ValueError(f"cannot resume from {path!r}: it was trained on classes "
                             f"{state['classes']}, the data has {self.classes}")
        ckpt.check_state_dict(self.raw_model.state_dict(), state["model"], f"checkpoint {path!r}")
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if (state["ema"] is None) != (self.ema is None):
            raise ValueError(f"cannot resume from {path!r}: EMA was "
                             f"{'off' if state['ema'] is None else 'on'} there")
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        rngs = state["rng"]
        if state.get("world_size", 1) != self.ctx.world_size:
            self._log(f"warning: {path!r} was written by {state.get('world_size', 1)} process(es), "
                      f"this run has {self.ctx.world_size}: the data order continues, but the "
                      f"random augmentation stream will not be bit-identical")
        ckpt.set_rng_state(rngs[min(self.ctx.rank, len(rngs) - 1)])
        self.start_epoch = int(state["epoch"])
        self.start_step = int(state.get("step", 0))
        if self.start_step:
            if self.ctx.enabled:
                raise ValueError(f"cannot resume from {path!r} with several processes: it was "
                                 f"written inside an epoch by a single-process run")
            self.partial = state["epoch_partial"]
            self.partial_rng = rngs[0]
        self.history = list(state["history"])
        self.best = dict(state["best"])
        within = f" and {self.start_step} step(s) of the next" if self.start_step else ""
        self._log(f"resumed from {path} after epoch {self.start_epoch}{within}")

    def _finish(self) -> dict:
        c = self.cfg
        summary = {"model": c.model, "out": str(self.out), "epochs": c.epochs,
                   "best": dict(self.best), "history": self.history}
        best_path = self.out / BEST_NAME
        self.ctx.barrier()
        if best_path.is_file():
            best_model, _ = ckpt.load_model(best_path, c.model, backend=c.backend)
            best_model.to(self.ctx.device)
        else:
            best_model = self._eval_model()
        temperature = 1.0
        if c.calibrate:
            temperature = self._calibrate(best_model, best_path)
        split = "test" if len(self.splits.test) else "val"
        labels, logits, loss = self._predict(getattr(self.splits, split), best_model)
        metrics = scaled_metrics(labels, logits, self.classes, temperature)
        summary.update(split=split, test_metrics=metrics, test_loss=loss)
        if self.ctx.is_main:
            ckpt.write_json_atomic({"split": split, "loss": loss, **metrics,
                                    "split_settings": self._split_settings()},
                                   self.out / f"{split}_metrics.json")
            if c.plots:
                from ..report import plot_confusion, plot_curves, plot_reliability
                from .temperature import reliability_diagrams

                plot_curves(self.history, self.out / "curves.png", title=c.model)
                plot_confusion(metrics["confusion_matrix"], self.classes,
                               self.out / "confusion_matrix.png",
                               title=f"{c.model} on the {split} split")
                plot_reliability(reliability_diagrams(labels, logits, temperature),
                                 self.out / "reliability.png",
                                 title=f"{c.model} on the {split} split")
        self._log(f"[{c.model}] {split}: accuracy {metrics['accuracy']:.4f}  macro-F1 "
                  f"{metrics['macro_f1']:.4f}  ECE {metrics['ece']:.4f}"
                  + (f" (uncalibrated {metrics['uncalibrated']['ece']:.4f})"
                     if "uncalibrated" in metrics else "")
                  + f"  (best epoch {self.best['epoch']})")
        return summary

    def _split_settings(self) -> dict:
        """How the data was split (what `hdkd cv` checks the folds of one study share)."""
        c = self.cfg
        return {"data": c.data, "seed": c.seed, "val_fraction": c.val_fraction,
                "test_fraction": c.test_fraction, "folds": c.folds, "fold": c.fold,
                "groups": c.groups}

    def _calibrate(self, model: nn.Module, best_path: Path) -> float:
        """Fit temperature scaling on the validation split; stored in best.pt."""
        from .temperature import fit_temperature, store_temperature

        labels, logits, _ = self._predict(self.splits.val, model)
        temperature = fit_temperature(logits, labels)
        if self.ctx.is_main and best_path.is_file():
            store_temperature(best_path, temperature, fitted_on="the validation split")
        self._log(f"[{self.cfg.model}] temperature scaling: T = {temperature:.4f}, fitted on "
                  f"the {len(labels)} validation images" +
                  (f", stored in {best_path}" if best_path.is_file() else ""))
        return temperature


def train(config: TrainConfig, resume: Optional[str] = None, splits=None,
          log: Callable[[str], None] = print, overwrite: bool = False) -> dict:
    """Train one model as configured; see Trainer. Before anything is loaded, config.out is
    checked and locked (hdkd.distill.run_folder.RunFolder): a folder holding a run is refused
    unless resuming or overwrite=True. A SIGINT/SIGTERM raises TrainingInterrupted at the next
    step."""
    folder = RunFolder(config.out, resume=resume is not None, overwrite=overwrite)
    main_process = int(os.environ.get("RANK", "0")) == 0
    if not main_process:  # torchrun: rank 0 holds the folder, the others only check it
        folder.check_not_a_finished_run()
    with folder if main_process else contextlib.nullcontext():
        if main_process and overwrite and resume is None:
            for name in (LAST_NAME, BEST_NAME, LOG_NAME, *OUTPUT_NAMES):
                (folder.out / name).unlink(missing_ok=True)
        for path in folder.removed:
            log(f"removed {path.name}, left by an interrupted write")

        def announce(name: str) -> None:
            log(f"{name} received: stopping after the current step, which last.pt will hold; "
                f"Ctrl-C again stops at once")

        with StopRequest(announce) as stop:
            trainer = Trainer(config, splits=splits, resume=resume, log=log)
            trainer.stop = stop
            return trainer.fit()
