"""`hdkd eval`: metrics of a checkpoint on a split of a dataset; prints a table, writes JSON."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..models import list_models


def _run(args: argparse.Namespace) -> int:
    from ..data import load_dataset
    from ..distill import checkpoint as ckpt
    from ..distill.ddp import DistContext
    from ..distill.evaluate import eval_loader, predict
    from ..metrics import classification_metrics, format_metrics_table

    model, meta = ckpt.load_model(args.checkpoint, args.model, backend=args.backend,
                                  **({"img_size": args.img_size} if args.img_size else {}))
    # The split must be the one the model was trained with: reuse the run's settings.
    saved = meta.get("config") or {}
    seed = args.seed if args.seed is not None else saved.get("seed", 0)
    val_fraction = args.val_fraction if args.val_fraction is not None else saved.get("val_fraction", 0.1)
    test_fraction = (args.test_fraction if args.test_fraction is not None
                     else saved.get("test_fraction", 0.2))
    splits = load_dataset(args.data, model.img_size, seed=seed, val_fraction=val_fraction,
                          test_fraction=test_fraction, augment=False)
    classes = list(splits.classes)
    if meta["classes"] is not None and list(meta["classes"]) != classes:
        raise ValueError(f"checkpoint {args.checkpoint!r} was trained on classes "
                         f"{meta['classes']}, but {args.data!r} has {classes}")
    if model.num_classes != len(classes):
        raise ValueError(f"checkpoint {args.checkpoint!r} predicts {model.num_classes} classes, "
                         f"but {args.data!r} has {len(classes)}")
    dataset = getattr(splits, args.split)
    if len(dataset) == 0:
        raise ValueError(f"{args.data!r} has an empty {args.split} split")
    ctx = DistContext.from_env(args.device)
    model.to(ctx.device)
    labels, probs, loss = predict(model, eval_loader(dataset, args.batch_size, ctx), ctx)
    metrics = classification_metrics(labels, probs, classes)
    out = Path(args.json) if args.json else (Path(args.checkpoint).parent /
                                              f"eval_{args.split}.json")
    result = {"checkpoint": str(args.checkpoint), "model": meta["model_name"], "data": args.data,
              "split": args.split, "images": int(len(labels)), "loss": loss, **metrics}
    if ctx.is_main:
        print(f"{meta['model_name']} on {args.data} ({args.split}, {len(labels)} images)")
        print(format_metrics_table(metrics))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=_plain))
        print(f"wrote {out}")
    return 0


def _plain(o):
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def register(sub) -> None:
    p = sub.add_parser("eval", help="metrics of a checkpoint on a dataset split (table + JSON)",
                       description="Evaluate a checkpoint (hdkd best.pt / last.pt, or a state_dict "
                                   "of the original code with --model) on one split: accuracy, "
                                   "balanced accuracy, per-class precision/recall/F1, macro-F1, "
                                   "one-vs-rest AUROC and the confusion matrix.")
    p.add_argument("checkpoint", help="checkpoint file")
    p.add_argument("--data", required=True,
                   help="the dataset: 'digits', an image folder or a MedMNIST .npz")
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="(default: %(default)s)")
    p.add_argument("--model", choices=list_models(), default=None,
                   help="model held by a plain state_dict (default: read from an hdkd checkpoint)")
    p.add_argument("--img-size", type=int, default=None,
                   help="input size (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=None,
                   help="split seed (default: the training run's, else 0)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="(default: the training run's, else 0.1)")
    p.add_argument("--test-fraction", type=float, default=None,
                   help="(default: the training run's, else 0.2)")
    p.add_argument("--json", default=None,
                   help="where to write the metrics (default: eval_SPLIT.json next to the checkpoint)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--backend", default="auto",
                   help="hdkd op backend: auto, torch, ext or triton (default: %(default)s)")
    p.set_defaults(func=_run)
