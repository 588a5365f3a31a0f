"""torchrun with 2 CPU processes (gloo) against one process on the same global batch.

Without SyncBatchNorm each process normalises over its own half of the batch, so the one-process
reference runs the two halves separately (as the two ranks do), averages their gradients (as
DDP's all-reduce does) and keeps rank 0's BN running statistics (DDP broadcasts rank 0's buffers).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from hdkd.distill import checkpoint as ckpt
from hdkd.distill.config import TrainConfig
from hdkd.distill.trainer import Trainer

from test_cli import image_folder

WORLD, BATCH = 2, 4


def _torchrun(args, cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD),
           "--standalone", "-m", "hdkd", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path):
    data = str(image_folder(tmp_path / "data", per_class=12))
    out = tmp_path / "ddp"
    run = _torchrun(["train", "--model", "hdkd_student", "--data", data, "--out", str(out),
                     "--epochs", "1", "--img-size", "16", "--batch-size", str(BATCH),
                     "--lr", "1e-3", "--warmup-epochs", "0", "--no-augment", "--no-progress",
                     "--no-plots", "--device", "cpu"], cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("epoch 1/1") == 1, "only rank 0 may log"
    assert run.stdout.count("outputs in") == 1, "only rank 0 may print the summary"
    ddp_state = ckpt.read_checkpoint(out / "last.pt")
    assert ddp_state["world_size"] == WORLD and len(ddp_state["rng"]) == WORLD

    # One thread, as each torchrun rank has: the MBCSA pre-norm bias has an exactly-zero true
    # gradient (the expand BN removes any per-channel shift), so its computed gradient is rounding
    # noise that Adam turns into full-size steps; equal noise needs equal reduction order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _compare_with_one_process(tmp_path, data, out)
    finally:
        torch.set_num_threads(threads)


def _compare_with_one_process(tmp_path, data, out):
    ddp_state = ckpt.read_checkpoint(out / "last.pt")
    cfg = TrainConfig(model="hdkd_student", data=data, out=str(tmp_path / "ref"), epochs=1,
                      img_size=16, batch_size=BATCH, lr=1e-3, warmup_epochs=0, augment=False,
                      progress=False, plots=False, device="cpu")
    ref = Trainer(cfg, log=lambda m: None)
    model = ref.raw_model
    model.train()
    ref.schedule.set_epoch(0)
    loaders = []
    for rank in range(WORLD):
        sampler = DistributedSampler(ref.splits.train, WORLD, rank, shuffle=True, seed=cfg.seed,
                                     drop_last=True)
        sampler.set_epoch(0)
        loaders.append(DataLoader(ref.splits.train, BATCH, sampler=sampler, drop_last=True))
    steps = 0
    for batches in zip(*loaders):
        ref.optimizer.zero_grad()
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        for rank in reversed(range(WORLD)):  # rank 0 last: its BN statistics are kept
            if rank == 0:
                for k, v in model.named_buffers():
                    v.copy_(buffers[k])
            x, y = batches[rank]
            loss, _ = ref.compute_loss(x, y)
            (loss / WORLD).backward()
        ref.optimizer.step()
        steps += 1
    assert steps >= 2, "the test should cover more than one optimizer step"

    for key, value in model.state_dict().items():
        torch.testing.assert_close(ddp_state["model"][key], value, rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"{key}: {m}")

    # Validation metrics gathered over both ranks equal one process evaluating the whole split
    # with the same (DDP-trained) weights.
    record = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    model.load_state_dict(ddp_state["model"])
    metrics, val_loss = ref._evaluate(ref.splits.val, model)
    assert record["val_accuracy"] == pytest.approx(metrics["accuracy"])
    assert record["val_macro_f1"] == pytest.approx(metrics["macro_f1"])
    assert record["val_loss"] == pytest.approx(val_loss, rel=1e-6)


def test_sync_bn_is_refused_with_the_reason(tmp_path, capsys):
    from hdkd.cli import main

    assert main(["train", "--model", "hdkd_student", "--data", "digits", "--sync-bn",
                 "--out", str(tmp_path)]) == 2
    assert "--sync-bn is not supported: hdkd's MBCSA blocks" in capsys.readouterr().err
