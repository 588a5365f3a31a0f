"""How a command declares its parser, and the options several commands take."""
from __future__ import annotations

import argparse
from typing import Callable, Optional

from ..models import list_models


def add_command(sub, name: str, run: Callable[[argparse.Namespace], int], help: str,
                description: Optional[str] = None, **options) -> argparse.ArgumentParser:
    """`hdkd NAME`: `help` is its line in `hdkd --help`, `description` (a command module passes its
    docstring) heads `hdkd NAME --help`, and main() calls run(args). The caller adds the
    arguments to the parser returned."""
    p = sub.add_parser(name, help=help, description=description, **options)
    p.set_defaults(func=run)
    return p


def add_checkpoint_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="hdkd checkpoint (best.pt, last.pt) or a state_dict")


def add_model_option(p: argparse.ArgumentParser) -> None:
    """--model, for a checkpoint that is a plain state_dict and so does not say its model."""
    p.add_argument("--model", choices=list_models(), default=None,
                   help="model held by a plain state_dict (default: read from an hdkd checkpoint)")


def add_device_options(p: argparse.ArgumentParser) -> None:
    """--device and --backend of a command that runs a checkpoint."""
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--backend", default="auto",
                   help="hdkd op backend: auto, torch, ext or triton (default: %(default)s)")
