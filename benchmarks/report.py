"""Turn a pytest-benchmark JSON from the hdkd suites into a markdown table and a PNG chart.

    python benchmarks/report.py benchmarks/results/cpu-baseline.json
writes cpu-baseline.md and cpu-baseline.png beside the JSON (or under --out-dir).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

LEVELS = ["ops", "blocks", "models", "train_step", "distill_step"]


def _fmt(v, spec: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def header(data: dict) -> list[str]:
    m, c = data.get("machine_info", {}), data.get("commit_info", {})
    load = m.get("load_average")
    load_end = m.get("load_average_end")
    lines = [
        f"# hdkd benchmarks: {m.get('device', '?')}",
        "",
        f"- date: {data.get('datetime', '?')}",
        f"- device: {m.get('device', '?')} ({m.get('cpu', {}).get('count', '?')} logical CPUs, "
        f"{m.get('torch_threads', '?')} torch threads)",
        f"- torch {m.get('torch', '?')} (CUDA {m.get('cuda') or 'none'}), "
        f"triton {m.get('triton') or 'none'}, hdkd {m.get('hdkd', '?')}",
        f"- backends: {', '.join(f'{k}: {v}' for k, v in m.get('backends', {}).items())}",
        f"- git commit: {c.get('id', '?')}{' (dirty)' if c.get('dirty') else ''} "
        f"on {c.get('branch', '?')}",
        f"- measured copy bandwidth: {_fmt(m.get('copy_bandwidth_gbytes_per_s'), '.1f')} GB/s",
        f"- load average (1/5/15 min) at start: {load}, at end: {load_end}",
        "",
        "Times are medians; FLOPs follow fvcore (one multiply-add = one FLOP), so TFLOP/s is "
        "multiply-adds per second; 'floor' is the bytes-floor time (minimal bytes / copy "
        "bandwidth) over the median (1 = at the floor); speed-ups are over the eager reference "
        "and torch.compile of it measured in the same run.",
    ]
    return lines


COLUMNS = ["workload", "dtype", "batch", "impl", "median ms", "img/s", "GFLOP", "TFLOP/s",
           "GB/s", "floor", "vs eager", "vs compile", "peak MiB"]


def row(b: dict) -> list[str]:
    e = b["extra_info"]
    return [e.get("workload", b["name"]), e.get("dtype", "?"), str(e.get("batch", "?")),
            e.get("impl", "?"), _fmt(b["stats"]["median"], ".3f", 1e3),
            _fmt(e.get("images_per_s"), ".1f"), _fmt(e.get("flops"), ".3f", 1e-9),
            _fmt(e.get("tflops_per_s"), ".3g"), _fmt(e.get("gbytes_per_s"), ".3g"),
            _fmt(e.get("fraction_of_bytes_floor"), ".3f"), _fmt(e.get("speedup_vs_eager"), ".2f"),
            _fmt(e.get("speedup_vs_compile"), ".2f"),
            _fmt(e.get("peak_memory_bytes"), ".1f", 2 ** -20)]


def markdown(data: dict) -> str:
    lines = header(data)
    benches = data["benchmarks"]
    for level in LEVELS + sorted({b["extra_info"].get("level", "?") for b in benches} -
                                 set(LEVELS)):
        rows = [b for b in benches if b["extra_info"].get("level") == level]
        if not rows:
            continue
        lines += ["", f"## {level}", "", "| " + " | ".join(COLUMNS) + " |",
                  "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(row(b)) + " |" for b in rows]
    notes = sorted({b["extra_info"][k] for b in benches for k in ("compile_peer",)
                    if k in b["extra_info"]})
    methods = sorted({b["extra_info"]["peak_memory_method"] for b in benches
                      if "peak_memory_method" in b["extra_info"]})
    if notes or methods:
        lines += ["", "Notes:"] + [f"- compile peer: {n}" for n in notes] + \
                 [f"- peak memory: {m}" for m in methods]
    return "\n".join(lines) + "\n"


def chart(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = data["benchmarks"]
    groups: dict[str, dict[str, float]] = {}
    for b in benches:
        e = b["extra_info"]
        label = f"{e.get('workload', b['name'])} [{e.get('dtype', '')}]"
        groups.setdefault(label, {})[e.get("impl", "?")] = b["stats"]["median"] * 1e3
    impls = sorted({i for g in groups.values() for i in g},
                   key=lambda i: (i != "eager", i != "compile", i))
    height = 0.8 / max(len(impls), 1)
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(groups) * max(len(impls), 1) + 1.5))
    labels = list(groups)
    for k, impl in enumerate(impls):
        ys = [i + k * height for i, g in enumerate(labels) if impl in groups[g]]
        xs = [groups[g][impl] for g in labels if impl in groups[g]]
        ax.barh(ys, xs, height=height, label=impl)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(labels))], labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median time per call (ms, log scale)")
    ax.set_title(f"hdkd benchmarks on {data.get('machine_info', {}).get('device', '?')}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", type=Path)
    p.add_argument("--out-dir", type=Path, default=None)
    args = p.parse_args(argv)
    data = json.loads(args.json.read_text())
    if not data.get("benchmarks"):
        p.error(f"{args.json}: no benchmarks (was it written with --benchmark-disable?)")
    out = (args.out_dir or args.json.parent) / args.json.stem
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.md").write_text(markdown(data))
    chart(data, Path(f"{out}.png"))
    print(f"wrote {out}.md and {out}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
