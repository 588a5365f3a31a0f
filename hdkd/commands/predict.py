"""Predict image files and folders (searched recursively) with a checkpoint: one row per image
with its path, the predicted class, its probability and every class's probability (or the top k).
Files that cannot be read are listed at the end and the exit code is 1; the others are still
predicted. The output file is written whole or not at all."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .arguments import add_checkpoint_argument, add_command, add_device_options, add_model_option
from .unreadable import report_unreadable


def _class_names(args: argparse.Namespace, saved, num_classes: int) -> list[str]:
    if args.classes is not None:
        names = [c.strip() for c in args.classes.split(",")]
        if len(names) != num_classes or not all(names) or len(set(names)) != len(names):
            raise ValueError(f"--classes {args.classes!r}: expected {num_classes} distinct "
                             f"non-empty names (the model predicts {num_classes} classes)")
        return names
    if saved is not None:
        return list(saved)
    print(f"hdkd predict: {args.checkpoint} stores no class names; writing class_0 ... "
          f"class_{num_classes - 1} (--classes names them)", file=sys.stderr)
    return [f"class_{i}" for i in range(num_classes)]


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..distill import checkpoint as ckpt
    from ..distill.ddp import DistContext
    from ..predict import Prediction, PredictionRun, find_images, format_predictions, predict_files

    fmt = "csv"
    if args.out is not None:
        fmt = Path(args.out).suffix.lower().lstrip(".")
        if fmt not in ("csv", "json"):
            raise ValueError(f"--out {args.out!r}: the file name must end in .csv or .json")
    paths = find_images(args.inputs)
    sizes = {k: v for k, v in (("num_classes", args.num_classes), ("img_size", args.img_size))
             if v is not None}
    model, meta = ckpt.load_model(args.checkpoint, args.model, backend=args.backend, **sizes)
    classes = _class_names(args, meta["classes"], model.num_classes)
    if args.top_k is not None and not 1 <= args.top_k <= len(classes):
        raise ValueError(f"--top-k {args.top_k}: must be between 1 and {len(classes)} "
                         f"(the number of classes)")
    device = DistContext.from_env(args.device).device
    model.to(device)
    run = PredictionRun()
    with tqdm(total=len(paths), unit="image", disable=None, file=sys.stderr) as bar:
        for path, result in predict_files(model, paths, batch_size=args.batch_size, tta=args.tta,
                                          temperature=meta.get("temperature", 1.0),
                                          device=device, progress=bar.update):
            if isinstance(result, Exception):
                run.failures.append((path, str(result)))
            else:
                run.predictions.append(Prediction(path, result))
    text = format_predictions(run, classes, fmt, args.top_k)
    if args.out is None:
        sys.stdout.write(text)
    else:
        ckpt.write_text_atomic(text, args.out)
        print(f"{len(run.predictions)} images predicted -> {args.out}", file=sys.stderr)
    return report_unreadable("predict", run.failures, len(paths))


def register(sub) -> None:
    p = add_command(sub, "predict", _run, description=__doc__,
                    help="class probabilities of a checkpoint for image files and folders")
    add_checkpoint_argument(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    p.add_argument("--out", default=None,
                   help="predictions file, .csv or .json (default: CSV on standard output)")
    p.add_argument("--top-k", type=int, default=None,
                   help="write the k most probable classes instead of every class")
    p.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--tta", action="store_true",
                   help="average over the image and its horizontal, vertical and double flips")
    p.add_argument("--classes", default=None,
                   help="comma-separated class names, in the model's order (default: the names "
                        "stored in the checkpoint)")
    add_model_option(p)
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes of a plain state_dict's model (default: the checkpoint's)")
    p.add_argument("--img-size", type=int, default=None,
                   help="input size of a plain state_dict's model (default: the checkpoint's)")
    add_device_options(p)
