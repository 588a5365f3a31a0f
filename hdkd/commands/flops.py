"""`hdkd flops MODEL [--img-size S]`: parameters and GFLOPs per stage and in total."""
from __future__ import annotations

import argparse

from .arguments import add_command


def _run(args: argparse.Namespace) -> int:
    import torch

    from hdkd.flops import stage_table
    from hdkd.models import create_model

    model = create_model(args.model, num_classes=args.num_classes, img_size=args.img_size,
                         backend=args.backend).eval()
    x = torch.randn(1, model.in_chans, args.img_size, args.img_size)
    rows = stage_table(model, (x,))
    print(f"{args.model} at {args.img_size}x{args.img_size}, {args.num_classes} classes, "
          f"batch 1 (fvcore: one multiply-add = one FLOP)")
    print(f"{'part':14s} {'parameters':>12s} {'GFLOPs':>9s}")
    for name, params, flops in rows:
        print(f"{name:14s} {params:12,d} {flops / 1e9:9.3f}")
    return 0


def register(sub) -> None:
    from hdkd.models import list_models

    p = add_command(sub, "flops", _run,
                    help="parameters and GFLOPs per stage and in total (fvcore)",
                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", choices=list_models())
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=4)
    p.add_argument("--backend", default="torch",
                   help="backend whose ops are traced (fused ops count as the reference)")
