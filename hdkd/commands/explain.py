"""For each image, a PNG with a heatmap over the image and the predicted class and probability in
the title: Grad-CAM or Grad-CAM++ on the last convolutional stage (any model), or attention rollout
through the transformer (students)."""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from .arguments import add_checkpoint_argument, add_command, add_device_options, add_model_option
from .unreadable import report_unreadable


def _png_names(paths: list[str], method: str) -> list[str]:
    """<image name>.<method>.png; images of the same name in different folders get their
    position in the input order as well, so that no heatmap overwrites another."""
    stems = [Path(p).stem for p in paths]
    repeated = {s for s, n in Counter(stems).items() if n > 1}
    tag = method.replace("+", "p")
    return [f"{s}-{i}.{tag}.png" if s in repeated else f"{s}.{tag}.png"
            for i, s in enumerate(stems)]


def _run(args: argparse.Namespace) -> int:
    import torch

    from ..data.folders import ImageReadError, read_image
    from ..data.transforms import finish, resize, to_three_channels
    from ..distill import checkpoint as ckpt
    from ..distill.ddp import DistContext
    from ..explain import heatmaps, missing_packages, render, require_transformer, resolve_class
    from ..predict import find_images

    missing = missing_packages(args.method)
    if missing:
        print(f"hdkd explain: error: --method {args.method} needs {', '.join(missing)}: "
              f"pip install 'hdkd[explain]'", file=sys.stderr)
        return 2
    paths = find_images(args.images)
    model, meta = ckpt.load_model(args.checkpoint, args.model, backend=args.backend)
    classes = list(meta["classes"] or (f"class_{i}" for i in range(model.num_classes)))
    target = resolve_class(args.target_class, classes)
    if args.method == "attention":
        require_transformer(model, meta["model_name"])  # before any heatmap is written
    device = DistContext.from_env(args.device).device
    model.to(device).eval()
    temperature = meta.get("temperature", 1.0)
    os.makedirs(args.out, exist_ok=True)
    failures, written = [], 0
    for path, name in zip(paths, _png_names(paths, args.method)):
        try:
            image = read_image(path)
            shown = to_three_channels(resize(image, model.img_size))
            x = finish(image, model.img_size)[None].to(device)
        except (ImageReadError, ValueError) as e:
            failures.append((path, str(e)))
            continue
        with torch.no_grad():
            probs = torch.softmax(model(x).float() / temperature, dim=1)[0].cpu()
        cls = int(probs.argmax()) if target is None else target
        heatmap = heatmaps(model, x, args.method, [cls])[0]
        title = (f"{Path(path).name}: predicted {classes[int(probs.argmax())]} "
                 f"({float(probs.max()):.1%})")
        if target is not None:
            title += f"\n{args.method} for {classes[cls]} ({float(probs[cls]):.1%})"
        ckpt.write_bytes_atomic(render(shown, heatmap, title), Path(args.out) / name)
        written += 1
    print(f"{written} heatmaps ({args.method}, {meta['model_name']}) -> {args.out}")
    return report_unreadable("explain", failures, len(paths))


def register(sub) -> None:
    p = add_command(sub, "explain", _run, description=__doc__,
                    help="heatmaps of where a checkpoint looked (Grad-CAM, Grad-CAM++, attention)")
    add_checkpoint_argument(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files and/or folders")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--method", choices=("gradcam", "gradcam++", "attention"), default="gradcam",
                   help="(default: %(default)s)")
    p.add_argument("--target-class", default=None,
                   help="class name to explain (default: each image's predicted class)")
    add_model_option(p)
    add_device_options(p)
