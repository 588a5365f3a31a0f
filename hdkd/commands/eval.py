"""Evaluate a checkpoint (hdkd best.pt / last.pt, or a state_dict of the original code with
--model) on one split: accuracy, balanced accuracy, per-class precision/recall/F1, macro-F1,
one-vs-rest AUROC, the confusion matrix and calibration (ECE, Brier score, NLL, reliability
diagram). The checkpoint's temperature scaling, if any, is applied."""
from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_command, add_device_options, add_model_option


def _load_splits(args: argparse.Namespace, meta: dict, img_size: int):
    """The splits the model was trained with: the run's own split settings (its fold and groups
    file too) unless overridden."""
    from ..data import load_dataset
    from ..data.splits import named_classes

    saved = meta.get("config") or {}

    def setting(name, default):
        value = getattr(args, name)
        return value if value is not None else saved.get(name, default)

    splits = load_dataset(args.data, img_size, seed=setting("seed", 0),
                          val_fraction=setting("val_fraction", 0.1),
                          test_fraction=setting("test_fraction", 0.2), augment=False,
                          folds=saved.get("folds"), fold=saved.get("fold"),
                          groups=saved.get("groups"))
    # the names the run gave the data's classes (train --classes), else the data's own
    splits.classes = named_classes(splits.classes, saved.get("classes"))
    if meta["classes"] is not None and list(meta["classes"]) != splits.classes:
        raise ValueError(f"checkpoint {args.checkpoint!r} was trained on classes "
                         f"{meta['classes']}, but {args.data!r} has {splits.classes}")
    return splits


def _run(args: argparse.Namespace) -> int:
    from ..bootstrap import bootstrap_intervals
    from ..distill import checkpoint as ckpt
    from ..distill.ddp import DistContext
    from ..distill.evaluate import eval_loader, predict, predictions_csv, scaled_metrics
    from ..distill.temperature import (fit_temperature, reliability_diagrams,
                                       scaled_probabilities, store_temperature)
    from ..metrics import format_metrics_table
    from ..report import plot_reliability

    if args.calibrate and not ckpt.is_hdkd_checkpoint(ckpt.read_checkpoint(args.checkpoint)):
        raise ValueError(f"--calibrate stores the temperature in the checkpoint, but "
                         f"{args.checkpoint!r} is a plain state_dict; convert it first with "
                         f"`hdkd convert --to hdkd`")
    model, meta = ckpt.load_model(args.checkpoint, args.model, backend=args.backend,
                                  **({"img_size": args.img_size} if args.img_size else {}))
    splits = _load_splits(args, meta, model.img_size)
    classes = list(splits.classes)
    if model.num_classes != len(classes):
        raise ValueError(f"checkpoint {args.checkpoint!r} predicts {model.num_classes} classes, "
                         f"but {args.data!r} has {len(classes)}")
    dataset = getattr(splits, args.split)
    if len(dataset) == 0:
        raise ValueError(f"{args.data!r} has an empty {args.split} split")
    ctx = DistContext.from_env(args.device)
    model.to(ctx.device)
    temperature = meta["temperature"]
    if args.calibrate:
        val_labels, val_logits, _ = predict(model, eval_loader(splits.val, args.batch_size, ctx),
                                            ctx)
        temperature = fit_temperature(val_logits, val_labels)
        if ctx.is_main:
            store_temperature(args.checkpoint, temperature,
                              fitted_on=f"the val split of {args.data}")
            print(f"temperature scaling: T = {temperature:.4f}, fitted on the {len(val_labels)} "
                  f"validation images of {args.data}; stored in {args.checkpoint}")
    labels, logits, loss = predict(model, eval_loader(dataset, args.batch_size, ctx), ctx)
    metrics = scaled_metrics(labels, logits, classes, temperature)
    probs = scaled_probabilities(logits, temperature)
    if args.bootstrap:
        metrics["confidence_intervals"] = bootstrap_intervals(labels, probs, args.bootstrap,
                                                              seed=args.bootstrap_seed)
    out = Path(args.json) if args.json else (Path(args.checkpoint).parent /
                                              f"eval_{args.split}.json")
    csv_path = out.with_name(f"{out.stem}_predictions.csv")
    result = {"checkpoint": str(args.checkpoint), "model": meta["model_name"], "data": args.data,
              "split": args.split, "images": int(len(labels)), "loss": loss, **metrics}
    if ctx.is_main:
        print(f"{meta['model_name']} on {args.data} ({args.split}, {len(labels)} images)")
        print(format_metrics_table(metrics))
        ckpt.write_json_atomic(result, out)
        images = getattr(dataset, "paths", range(len(labels)))
        ckpt.write_text_atomic(predictions_csv(labels, probs, classes, images), csv_path)
        print(f"wrote {out} and {csv_path}")
        if args.plots:
            png = plot_reliability(reliability_diagrams(labels, logits, temperature),
                                   out.with_name(f"reliability_{args.split}.png"),
                                   title=f"{meta['model_name']} on the {args.split} split")
            print(f"wrote {png}")
    return 0


def register(sub) -> None:
    p = add_command(sub, "eval", _run, description=__doc__,
                    help="metrics of a checkpoint on a dataset split (table + JSON)")
    p.add_argument("checkpoint", help="checkpoint file")
    p.add_argument("--data", required=True,
                   help="the dataset: 'digits', an image folder or a MedMNIST .npz")
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="(default: %(default)s)")
    add_model_option(p)
    p.add_argument("--img-size", type=int, default=None,
                   help="input size (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=None,
                   help="split seed (default: the training run's, else 0)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="(default: the training run's, else 0.1)")
    p.add_argument("--test-fraction", type=float, default=None,
                   help="(default: the training run's, else 0.2)")
    p.add_argument("--calibrate", action="store_true",
                   help="fit temperature scaling on the validation split first, store it in the "
                        "checkpoint and report calibration before and after (default: apply the "
                        "checkpoint's temperature, 1 if it has none)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="95%% confidence intervals of accuracy, balanced accuracy, macro-F1 and "
                        "macro AUROC from N bootstrap resamples of the split; 0 turns them off "
                        "(default: %(default)s)")
    p.add_argument("--bootstrap-seed", type=int, default=0,
                   help="seed of the bootstrap resampling (default: %(default)s)")
    p.add_argument("--json", default=None,
                   help="where to write the metrics (default: eval_SPLIT.json next to the "
                        "checkpoint); the per-image predictions go next to it as "
                        "NAME_predictions.csv")
    p.add_argument("--no-plots", dest="plots", action="store_false",
                   help="skip reliability_SPLIT.png, written next to the JSON (default: written)")
    add_device_options(p)
