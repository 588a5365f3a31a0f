"""The `hdkd` command. Each subcommand module exposes register(subparsers), which adds its parser
with hdkd.commands.arguments.add_command (the module's docstring is its --help description);
main() dispatches."""
from __future__ import annotations

import argparse
import os
import platform
import sys
from typing import Optional


def _info(args: argparse.Namespace) -> int:
    import torch

    import hdkd
    from hdkd.ops import backends, get_backend, resolve
    from hdkd.ops.op_table import OP_NAMES

    print(f"hdkd {hdkd.__version__}  python {platform.python_version()}  torch {torch.__version__}"
          f"  (CUDA build: {torch.version.cuda or 'no'})")
    cuda = torch.cuda.is_available()
    print(f"GPU: {torch.cuda.get_device_name(0) if cuda else 'none visible'}")
    print(hdkd.ops.ext.build.describe_build())
    print(f"backend selection: {get_backend()}")
    print("backends:")
    registry = hdkd.ops.backends_registry()
    for name, status in backends().items():
        detail = registry[name].describe()
        print(f"  {name:7s} {status}" + (f"  [{detail}]" if detail and status == "available" else ""))
    _print_measured_choices()
    devices = ["cpu"] + (["cuda"] if cuda else [])
    for dev in devices:
        picks = {op: resolve(op, torch.device(dev), "auto").name for op in OP_NAMES}
        print(f"auto on {dev}, unmeasured cases: "
              + ", ".join(f"{op} -> {b}" for op, b in picks.items()))
    return 0


def _print_measured_choices() -> None:
    """auto's measured choices per device kind (nearest measured size wins), or the fixed order
    a kind without measurements uses."""
    from hdkd.ops import AUTO_ORDER, backends, backends_registry, measured

    print("auto, measured choices (benchmarks/choose_backends.py; a call takes its nearest "
          "measured size):")
    recorded = measured.TABLE.devices()
    available = {name for name, status in backends().items() if status == "available"}
    for kind in sorted(set(AUTO_ORDER) | set(recorded)):
        order = " > ".join(AUTO_ORDER.get(kind, ("torch",)))
        if kind not in recorded:
            print(f"  {kind}: no measured data, auto order {order}")
            continue
        r = recorded[kind]
        print(f"  {kind}: measured on {r['device']}, {r['threads']} threads, torch {r['torch']}, "
              f"hdkd {r['hdkd_commit']}, {r['date'][:10]}; unmeasured cases: {order}")
        for line in measured.summary_lines(kind):
            print(f"    {line}")
        winners = {measured.ranking_of(e["ms"])[0] for e in r["entries"]}
        usable = {n for n in available if kind in backends_registry()[n].devices()}
        for name in sorted(winners - usable):
            print(f"    ({name} cannot run here: its cases go to the next measured backend)")


def _register_info(sub) -> None:
    add_command(sub, "info", _info, help="versions, GPU and each backend: available or why not")


from .commands import flops as _flops  # noqa: E402
from .commands import convert as _convert, demo as _demo, eval as _eval, train as _train  # noqa: E402
from .commands import cv as _cv  # noqa: E402
from .commands import explain as _explain, export as _export, predict as _predict  # noqa: E402
from .commands.arguments import add_command  # noqa: E402
from .distill.run_folder import RunFolderError  # noqa: E402
from .distill.trainer import NonFiniteLossError  # noqa: E402
from .ops import BackendUnavailableError  # noqa: E402

COMMANDS = [_register_info, _flops.register, _train.register, _eval.register, _cv.register,
            _demo.register,
            _convert.register, _predict.register, _export.register,
            _explain.register]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hdkd", description="HDKD: fast hybrid data-efficient knowledge distillation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(sub)
    return parser


# Errors a user can cause and fix (a bad argument, file, checkpoint or setting): printed as one
# message without a traceback, unless HDKD_DEBUG=1. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, OSError, BackendUnavailableError,
               NonFiniteLossError, RunFolderError)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as e:
        if os.environ.get("HDKD_DEBUG"):
            raise
        print(f"hdkd {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
