"""Distillation step: hdkd's single pass vs the original HDKD code's re-running design.

hdkd: one teacher pass (eval, no grad) and one student pass per step, both with their three stage
features (forward_with_features), then HDKDLoss.
original: the teacher's logits from a full pass, then for each distilled stage i = 1..3 the
teacher re-run up to stage i and the student re-run up to stage i (as the original
FeatureDistillationLoss did), plus the student's full pass: 4 teacher and 4 student passes.
Both use the same models, backend, optimizer (AdamW) and loss values; they run interleaved in
one process and the median step time of each is reported.

    python benchmarks/distill_vs_original.py --img-size 32 --batch-size 16 --steps 10
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def _stages(model, x, upto: int):
    for stage in (model.stage1, model.stage2, model.stage3)[:upto]:
        x = stage(x)
    return x


def original_loss(teacher, student, x, y, alpha=0.5, tau=1.0, feature_weight=10.0, beta=1.0):
    """The original loss computation: logit KD with its own teacher pass, then one partial
    teacher pass and one partial student pass per distilled stage."""
    cls, dist = student(x)
    with torch.no_grad():
        t_logits = teacher(x)
    base = F.cross_entropy(cls.float(), y)
    kd = F.kl_div(F.log_softmax(dist.float() / tau, dim=1),
                  F.log_softmax(t_logits.float() / tau, dim=1),
                  reduction="sum", log_target=True) * tau * tau / dist.numel()
    fkd = 0.0
    for i in range(3):
        with torch.no_grad():
            t_feat = _stages(teacher, x, i + 1)
        s_feat = _stages(student, x, i + 1)
        fkd = fkd + F.mse_loss(t_feat.float(), s_feat.float()) * (i + 1) ** beta
    return (1 - alpha) * base + alpha * kd + feature_weight * fkd


def hdkd_loss(teacher, student, x, y, loss_fn):
    from hdkd.distill import forward_with_features

    with torch.no_grad():
        t_logits, t_feats = forward_with_features(teacher, x)
    s_out, s_feats = forward_with_features(student, x)
    return loss_fn(s_out, s_feats, t_logits, t_feats, y)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(img_size=32, batch_size=16, steps=10, warmup=2, num_classes=4, backend="auto",
        device="cpu", amp="none", channels_last=False, seed=0) -> dict:
    from hdkd.distill import HDKDLoss
    from hdkd.models import create_model

    dev = torch.device(device)
    torch.manual_seed(seed)
    teacher = create_model("hdkd_teacher", num_classes=num_classes, img_size=img_size,
                           backend=backend).to(dev).eval().requires_grad_(False)
    student = create_model("hdkd", num_classes=num_classes, img_size=img_size,
                           backend=backend).to(dev).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    teacher.to(memory_format=fmt)
    student.to(memory_format=fmt)
    opt = torch.optim.AdamW(student.parameters(), lr=5e-5, weight_decay=0.05)
    loss_fn = HDKDLoss()
    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
                if amp != "none" else contextlib.nullcontext())
    x = torch.randn(batch_size, 3, img_size, img_size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)

    with autocast:  # same weights, same batch: the two designs compute the same loss
        first = {"hdkd": hdkd_loss(teacher, student, x, y, loss_fn).item(),
                 "original": original_loss(teacher, student, x, y).item()}

    def step(design):
        with autocast:
            loss = (hdkd_loss(teacher, student, x, y, loss_fn) if design == "hdkd"
                    else original_loss(teacher, student, x, y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = {"hdkd": [], "original": []}
    for i in range(warmup + steps):
        for design in ("hdkd", "original") if i % 2 == 0 else ("original", "hdkd"):
            _sync(dev)
            t0 = time.perf_counter()
            step(design)
            _sync(dev)
            if i >= warmup:
                times[design].append(time.perf_counter() - t0)
    med = {d: statistics.median(t) for d, t in times.items()}
    return {
        "img_size": img_size, "batch_size": batch_size, "steps": steps, "backend": backend,
        "device": str(dev), "amp": amp, "channels_last": channels_last,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "first_loss": first,
        "median_step_s": med,
        "img_per_s": {d: batch_size / s for d, s in med.items()},
        "speedup": med["original"] / med["hdkd"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--img-size", type=int, default=32, help="square input size, multiple of 16")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="timed steps per design")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per design first")
    p.add_argument("--backend", default="auto", help="hdkd op backend for both designs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    r = run(args.img_size, args.batch_size, args.steps, args.warmup, backend=args.backend,
            device=args.device, amp=args.amp, channels_last=args.channels_last)
    print(f"distillation step, {r['device']}, img {r['img_size']}, batch {r['batch_size']}, "
          f"backend {r['backend']}, amp {r['amp']}, {r['threads']} threads, "
          f"load {r['load_average_1min']}")
    print(f"{'design':10s} {'median step s':>14s} {'img/s':>10s} {'first loss':>12s}")
    for d in ("original", "hdkd"):
        print(f"{d:10s} {r['median_step_s'][d]:14.4f} {r['img_per_s'][d]:10.1f} "
              f"{r['first_loss'][d]:12.6f}")
    print(f"speed-up of hdkd's single pass: {r['speedup']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
