"""Export a checkpoint for deployment: ONNX (opset 18, for ONNX Runtime) or a torch.export
program. The file holds standard operators only (hdkd's reference composition), so it runs without
hdkd. Before the file is written, it is run (onnxruntime, or the loaded program) against PyTorch on
random images; a max abs difference above the tolerance fails and writes nothing."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .arguments import add_checkpoint_argument, add_command, add_model_option


def _batch(text: str):
    if text == "dynamic":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected 'dynamic' or a positive batch size, got {text!r}")
    return n


def _run(args: argparse.Namespace) -> int:
    from ..distill import checkpoint as ckpt
    from ..export import (SUFFIXES, ExportCheckError, TemperatureScaled, export_model,
                          missing_packages)

    missing = missing_packages(args.format)
    if missing:
        print(f"hdkd export: error: --format {args.format} needs {', '.join(missing)}: "
              f"pip install 'hdkd[deploy]'", file=sys.stderr)
        return 2
    model, meta = ckpt.load_model(args.checkpoint, args.model, backend="auto")
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(SUFFIXES[args.format])
    temperature = meta.get("temperature", 1.0)
    exported = model if temperature == 1.0 else TemperatureScaled(model, temperature)
    try:
        report = export_model(exported, out, args.format, batch=args.batch,
                              tolerance=args.tolerance)
    except ExportCheckError as e:
        print(f"hdkd export: {e}", file=sys.stderr)
        return 1
    batch = "dynamic" if report.batch is None else str(report.batch)
    print(f"{args.checkpoint} ({meta['model_name']}, {model.num_classes} classes, "
          f"{model.img_size}x{model.img_size}) -> {report.path} ({report.format}, batch {batch})"
          + (f", logits divided by the calibration temperature {temperature:.4g}"
             if exported is not model else ""))
    print(f"check: max abs difference from PyTorch {report.max_abs_diff:.3g} at batch sizes "
          f"{', '.join(map(str, report.checked_batches))} (allowed {args.tolerance:g})")
    return 0


def register(sub) -> None:
    p = add_command(sub, "export", _run, description=__doc__,
                    help="export a checkpoint to ONNX or a torch.export program (.pt2)")
    add_checkpoint_argument(p)
    p.add_argument("--format", choices=("onnx", "pt2"), required=True)
    p.add_argument("--out", default=None,
                   help="file to write (default: the checkpoint's name with .onnx / .pt2)")
    p.add_argument("--batch", type=_batch, default=None, metavar="dynamic|N",
                   help="batch size the file accepts (default: dynamic, any size)")
    add_model_option(p)
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest max abs difference (float32) the check accepts "
                        "(default: %(default)s)")
