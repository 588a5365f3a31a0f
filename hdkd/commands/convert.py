"""Convert a state_dict saved by the original HDKD code into an hdkd checkpoint (usable with
--teacher, hdkd eval, create_model), an hdkd checkpoint into the original layout, or either into a
folder to share (--to pretrained: config.json + model.safetensors, loaded by
hdkd.models.from_pretrained and by every hdkd command). Strict: every missing, unexpected or
mis-shaped key is reported and nothing is written."""
from __future__ import annotations

import argparse

from .arguments import add_command, add_model_option


def _run(args: argparse.Namespace) -> int:
    from ..distill import checkpoint as ckpt
    from ..models import save_pretrained, to_original_state_dict

    kwargs = {k: v for k, v in (("num_classes", args.num_classes), ("img_size", args.img_size))
              if v is not None}
    model, meta = ckpt.load_model(args.input, args.model, what="input checkpoint", **kwargs)
    target = args.to or ("original" if meta["layout"] == "hdkd" else "hdkd")
    temperature = meta["temperature"]
    if target == "pretrained":
        save_pretrained(model, args.output, classes=meta["classes"], temperature=temperature)
    elif target == "original":
        ckpt.save_atomic(to_original_state_dict(model), args.output)
        if temperature != 1.0:
            print(f"note: the original layout has no place for the checkpoint's temperature "
                  f"scaling; apply it yourself: softmax(logits / {temperature:.6g})")
    else:
        kept = {"temperature": temperature} if temperature != 1.0 else {}
        ckpt.save_atomic(ckpt.make_model_checkpoint(meta["model_name"], model, meta["classes"],
                                                    **kept), args.output)
    n = sum(t.numel() for t in model.state_dict().values())
    print(f"{args.input} ({meta['layout']} layout) -> {args.output} ({target} layout): "
          f"{meta['model_name']}, {model.num_classes} classes, img_size {model.img_size}, "
          f"{len(model.state_dict())} tensors, {n:,} values")
    return 0


def register(sub) -> None:
    p = add_command(sub, "convert", _run, description=__doc__,
                    help="original HDKD checkpoint <-> hdkd checkpoint <-> safetensors folder")
    p.add_argument("input", help="checkpoint file or save_pretrained folder to read")
    p.add_argument("output", help="file to write (a folder for --to pretrained)")
    add_model_option(p)
    p.add_argument("--to", choices=("hdkd", "original", "pretrained"), default=None,
                   help="target layout (default: original for an hdkd checkpoint, else hdkd)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="(default: read from the checkpoint)")
    p.add_argument("--img-size", type=int, default=None,
                   help="(default: read from the checkpoint; the student's position embedding "
                        "fixes it)")
