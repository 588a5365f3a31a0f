"""Read test_metrics.json of each run folder (hdkd train --folds K --fold I), check that they are
distinct folds of one study (same data, seed, K and groups file) and report accuracy, balanced
accuracy, macro-F1, macro AUROC, ECE, Brier and NLL as mean +- std over the folds."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from .arguments import add_command

REPORT_NAME = "test_metrics.json"
CV_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_ovr", "ece", "brier", "nll")
# settings every fold of one study must share
SHARED = ("data", "seed", "val_fraction", "folds", "groups")


def collect_folds(run_dirs: list[str]) -> tuple[list[dict], int]:
    """({"run", "fold", "metrics"} per run folder, sorted by fold; K), the runs checked to be
    distinct folds of one K-fold study."""
    missing = [d for d in run_dirs if not (Path(d) / REPORT_NAME).is_file()]
    if missing:
        raise FileNotFoundError(f"no {REPORT_NAME} (written when `hdkd train` finishes) in: "
                                f"{', '.join(missing)}")
    runs = []
    for d in run_dirs:
        path = Path(d) / REPORT_NAME
        try:
            report = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read {path}: {e}") from None
        runs.append({"run": str(d), "settings": report.get("split_settings") or {},
                     "metrics": {k: report.get(k) for k in CV_METRICS}})
    for key in SHARED:
        values = {json.dumps(r["settings"].get(key)) for r in runs}
        if len(values) > 1:
            listed = ", ".join(f"{r['run']}: {r['settings'].get(key)!r}" for r in runs)
            raise ValueError(f"these runs are not folds of one study: their {key} differs "
                             f"({listed})")
    folds = [r["settings"].get("fold") for r in runs]
    if None in folds:
        plain = [r["run"] for r in runs if r["settings"].get("fold") is None]
        raise ValueError(f"not trained with --folds K --fold I: {', '.join(plain)}")
    repeated = sorted({f for f in folds if folds.count(f) > 1})
    if repeated:
        twice = [r["run"] for r in runs if r["settings"]["fold"] in repeated]
        raise ValueError(f"fold(s) {repeated} given more than once: {', '.join(twice)}")
    total = runs[0]["settings"]["folds"]
    for r in runs:
        r["fold"] = r.pop("settings")["fold"]
    return sorted(runs, key=lambda r: r["fold"]), total


def summarise(runs: list[dict]) -> dict:
    """Per metric: mean, std (n - 1 in the denominator; None for one fold) and how many folds
    define it (AUROC is undefined on a fold missing a class)."""
    out = {}
    for key in CV_METRICS:
        values = np.array([r["metrics"][key] for r in runs if r["metrics"][key] is not None],
                          dtype=np.float64)
        out[key] = {"mean": float(values.mean()) if len(values) else None,
                    "std": float(values.std(ddof=1)) if len(values) > 1 else None,
                    "folds": len(values)}
    return out


def format_table(runs: list[dict], summary: dict) -> str:
    header = f"{'metric':<18} {'mean':>7}    {'std':>6}  " + "".join(
        f"  {'fold ' + str(r['fold']):>8}" for r in runs)
    lines = [header]
    for key in CV_METRICS:
        s = summary[key]
        mean = f"{s['mean']:7.4f}" if s["mean"] is not None else f"{'n/a':>7}"
        std = f"{s['std']:6.4f}" if s["std"] is not None else f"{'n/a':>6}"
        cells = "".join(f"  {r['metrics'][key]:8.4f}" if r["metrics"][key] is not None
                        else f"  {'n/a':>8}" for r in runs)
        lines.append(f"{key:<18} {mean} +- {std}  {cells}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from ..distill.checkpoint import write_json_atomic

    runs, total = collect_folds(args.runs)
    summary = summarise(runs)
    absent = sorted(set(range(total)) - {r["fold"] for r in runs})
    print(f"{len(runs)} fold(s) of {total}" + (f"; missing fold(s) {absent}" if absent else ""))
    print(format_table(runs, summary))
    out = Path(args.json) if args.json else Path(os.path.commonpath(
        [os.path.abspath(d) for d in args.runs])) / "cv_report.json"
    report = {"folds_total": total, "missing_folds": absent, "summary": summary,
              "folds": runs}
    write_json_atomic(report, out)
    print(f"wrote {out}")
    return 0


def register(sub) -> None:
    p = add_command(sub, "cv", _run, description=__doc__,
                    help="aggregate the folds of a cross-validation study")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="the folds' --out folders")
    p.add_argument("--json", default=None,
                   help="where to write the report (default: cv_report.json in the folders' "
                        "common parent)")
