"""Train the teacher, the student from scratch and the HDKD student on scikit-learn's digits
(nothing downloaded), then print parameters, GFLOPs, test accuracy, macro-F1 and inference img/s,
and write OUT/results.json and OUT/report.md with the plots. A few minutes on a 2-core CPU."""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

from .arguments import add_command

COLUMNS = [("model", "model", "s"), ("params", "params", ",d"), ("gflops", "GFLOPs", ".4f"),
           ("accuracy", "accuracy", ".4f"), ("macro_f1", "macro-F1", ".4f"),
           ("img_per_s", "img/s", ".0f")]


def count_gflops(model, img_size: int) -> float:
    """Forward GFLOPs of one image, one multiply-add = one FLOP: fvcore (through hdkd.flops) when
    installed, else torch.utils.flop_counter (which counts 2 per multiply-add, hence / 2)."""
    import torch

    x = torch.randn(1, model.in_chans, img_size, img_size)
    was_training = model.training
    model.eval()
    try:
        try:
            from ..flops import count_flops

            return count_flops(model, (x,)) / 1e9
        except ImportError:
            from torch.utils.flop_counter import FlopCounterMode

            # FlopCounterMode counts hdkd's fused custom ops as zero: count the reference path
            reference = copy.deepcopy(model)
            for m in reference.modules():
                if hasattr(m, "backend"):
                    m.backend = "torch"
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                reference(x)
            return counter.get_total_flops() / 2 / 1e9
    finally:
        model.train(was_training)


def inference_throughput(model, img_size: int, device, batch: int = 64, repeats: int = 5) -> float:
    """Median images per second of eval-mode forwards on random batches (after one warm-up)."""
    import torch

    model.eval()
    x = torch.randn(batch, model.in_chans, img_size, img_size, device=device)
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def _run(args: argparse.Namespace) -> int:
    import torch

    from ..data import load_dataset
    from ..distill import checkpoint as ckpt
    from ..distill.config import TrainConfig
    from ..distill.ddp import pick_device
    from ..distill.trainer import train
    from ..report import markdown_table, write_report

    start = time.perf_counter()
    out = Path(args.out)
    _refuse_earlier_demo(out, args.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    splits = load_dataset("digits", args.img_size, seed=args.seed, augment=args.augment)
    common = dict(data="digits", img_size=args.img_size, batch_size=args.batch_size,
                  seed=args.seed, backend=args.backend, device=args.device,
                  augment=args.augment, progress=args.progress)
    # shortened for a few epochs on a CPU (the original recipe's lr 5e-5 needs hundreds of
    # epochs); every setting is printed in the report
    student_recipe = dict(optimizer="adamw", lr=args.student_lr, weight_decay=0.05,
                          schedule="cosine", warmup_epochs=1, warmup_lr=args.student_lr / 10,
                          min_lr=args.student_lr / 100, epochs=args.epochs)
    # a teacher weaker than the student from scratch would only pull HDKD down: the original
    # constant lr leaves a few-epoch teacher at a noisy point, so by default its lr decays too
    teacher_decay = (dict(warmup_epochs=1, warmup_lr=args.teacher_lr / 10,
                          min_lr=args.teacher_lr / 100)
                     if args.teacher_schedule == "cosine" else {})
    runs = [
        ("hdkd_teacher", TrainConfig(model="hdkd_teacher", out=str(out / "teacher"),
                                     epochs=args.teacher_epochs, lr=args.teacher_lr,
                                     schedule=args.teacher_schedule, **teacher_decay, **common)),
        ("hdkd_student", TrainConfig(model="hdkd_student", out=str(out / "student"),
                                     **student_recipe, **common)),
        ("hdkd", TrainConfig(model="hdkd", out=str(out / "hdkd"),
                             teacher=str(out / "teacher" / "best.pt"), **student_recipe,
                             **common)),
    ]
    device = pick_device(args.device)
    rows = []
    for name, cfg in runs:
        summary = train(cfg, splits=splits, overwrite=args.overwrite)
        model, _ = ckpt.load_model(Path(cfg.out) / "best.pt", name, backend=args.backend)
        model.to(device)
        rows.append({
            "model": name,
            "accuracy": float(summary["test_metrics"]["accuracy"]),
            "macro_f1": float(summary["test_metrics"]["macro_f1"]),
            "params": sum(p.numel() for p in model.parameters()),
            "gflops": count_gflops(model.cpu(), args.img_size),
            "img_per_s": inference_throughput(model.to(device), args.img_size, device),
            "best_epoch": summary["best"]["epoch"],
            "epochs": cfg.epochs,
        })
    seconds = time.perf_counter() - start
    by_name = {r["model"]: r for r in rows}
    gain = by_name["hdkd"]["accuracy"] - by_name["hdkd_student"]["accuracy"]
    verdict = (f"HDKD {'>=' if gain >= 0 else '<'} student from scratch on test accuracy "
               f"({by_name['hdkd']['accuracy']:.4f} vs {by_name['hdkd_student']['accuracy']:.4f}, "
               f"{gain * 100:+.2f} points)")
    table = markdown_table(rows, COLUMNS)
    print()
    print(table)
    print(f"\n{verdict}; {len(splits.test)} test images; total {seconds:.0f} s")
    result = {"models": rows, "data": "digits", "img_size": args.img_size, "seed": args.seed,
              "test_images": len(splits.test), "seconds": seconds, "hdkd_minus_student": gain,
              "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    intro = (f"scikit-learn digits upsampled to {args.img_size} x {args.img_size}, "
             f"{len(splits.train)} train / {len(splits.val)} validation / {len(splits.test)} test "
             f"images (seed {args.seed}). Accuracy and macro-F1 on the test split with the "
             f"checkpoint chosen on the validation split; img/s: eval-mode inference, batch 64, "
             f"on {device} ({torch.get_num_threads()} threads).")
    notes = [verdict,
             f"teacher: Adam lr {args.teacher_lr:g}, {args.teacher_schedule}"
             f"{' with 1 warm-up epoch' if teacher_decay else ''}, {args.teacher_epochs} epochs; "
             f"students: AdamW "
             f"lr {args.student_lr:g}, weight decay 0.05, cosine with 1 warm-up epoch, "
             f"{args.epochs} epochs; batch {args.batch_size}; augmentation "
             f"{'on' if args.augment else 'off'}",
             f"HDKD: soft logit KD (alpha 0.5, tau 1) + 10 x stage-feature MSE from the teacher",
             f"total time {seconds:.0f} s"]
    images = []
    for name, cfg in runs:
        images += [(f"{name}: training curves", f"{Path(cfg.out).name}/curves.png"),
                   (f"{name}: confusion matrix (test)", f"{Path(cfg.out).name}/confusion_matrix.png")]
    report = write_report(out / "report.md", "hdkd demo", intro, table, images, notes)
    print(f"wrote {out / 'results.json'} and {report}")
    return 0


def _refuse_earlier_demo(out: Path, overwrite: bool) -> None:
    """Before anything is loaded: a folder holding an earlier demo needs --overwrite."""
    from ..distill.run_folder import RUN_FILES, RunFolderError

    found = [str(p.relative_to(out)) for p in
             [out / "results.json", *(out / d / f for d in ("teacher", "student", "hdkd")
                                      for f in RUN_FILES)] if p.exists()]
    if found and not overwrite:
        raise RunFolderError(f"hdkd demo: {str(out)!r} already holds a demo ({', '.join(found)}); "
                             f"pass --overwrite to replace it or choose another --out")


def register(sub) -> None:
    p = add_command(sub, "demo", _run, description=__doc__,
                    help="train teacher, student and HDKD on the embedded digits data; one table")
    p.add_argument("--out", default="runs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier demo in --out (default: such a folder is refused)")
    p.add_argument("--img-size", type=int, default=32,
                   help="image size, a multiple of 16 (default: %(default)s)")
    p.add_argument("--teacher-epochs", type=int, default=4, help="(default: %(default)s)")
    p.add_argument("--epochs", type=int, default=6,
                   help="epochs of the two students (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--teacher-lr", type=float, default=1e-3, help="(default: %(default)s)")
    p.add_argument("--teacher-schedule", choices=("cosine", "constant"), default="cosine",
                   help="the teacher's lr schedule; constant is the original recipe's "
                        "(default: %(default)s)")
    p.add_argument("--student-lr", type=float, default=1e-3, help="(default: %(default)s)")
    p.add_argument("--augment", action="store_true",
                   help="use the original train-time augmentation (default: off; its 180-degree "
                        "rotations and flips confuse digits such as 6 and 9)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--device", default="auto", help="(default: %(default)s)")
    p.add_argument("--backend", default="auto",
                   help="hdkd op backend; auto picks the fastest available (default: %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="hide the progress bars (default: shown when stderr is a terminal)")
