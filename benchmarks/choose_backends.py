"""Measure which backend is fastest for each fused op on this device and write the table that
backend "auto" reads (hdkd/ops/measured_backends.json; other device kinds' data is kept).

    python benchmarks/choose_backends.py [--out PATH] [--passes N] [--smoke]

Cases: channel_spatial_attention and dwconv_bn_gelu (eval and train), each as a no-grad forward
and as forward+backward; mbcsa_eval as a no-grad forward; mbcsa_train forward+backward; for each
dtype, memory format and the sizes below. Every candidate backend (CPU: ext, torch; CUDA: triton,
ext, torch; the Triton interpreter never) is timed in this process, interleaved: two warm-up
calls each, then rounds in rotating order with the suites' clock and L2 flush (harness.py), the
median per backend; after one untimed call of every case, the whole list is measured --passes
times and each case keeps its least disturbed pass. bfloat16/float16 blocks run under autocast with float32 weights as the suites
do; single ops run on tensors of the dtype.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch

import hdkd
import hdkd.ops as ops
from hdkd.distill.checkpoint import write_text_atomic
from hdkd.ops import measured
from hdkd.ops.reference import BatchNormState
from hdkd.nn import MBCSA

from harness import DEVICE, ON_GPU, CudaEventClock, cpu_name, flush_l2, sync

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (batch, block channels, size): blocks take B x C x S x S, the single ops the block's hidden
# activation B x 4C x S x S. CPU: small enough for the whole run to take minutes on 2 cores.
SIZES = {"cpu": [(2, 16, 14), (4, 48, 28), (8, 96, 56)],
         "cuda": [(8, 96, 28), (64, 192, 28), (64, 96, 56)]}
DTYPES = {"cpu": ["float32", "bfloat16"], "cuda": ["float32", "bfloat16", "float16"]}
# (workload, grad) pairs measured
CASES = [("channel_spatial_attention", False), ("channel_spatial_attention", True),
         ("dwconv_bn_gelu_eval", False), ("dwconv_bn_gelu_eval", True),
         ("dwconv_bn_gelu_train", False), ("dwconv_bn_gelu_train", True),
         ("mbcsa_eval", False), ("mbcsa_train", True)]
BLOCKS = ("mbcsa_eval", "mbcsa_train")
# timing per case: rounds = budget / one call of every backend, within [min, max]
BUDGET_S, MIN_ROUNDS, MAX_ROUNDS = (0.5, 20, 200) if ON_GPU else (1.5, 7, 40)


def candidates(op: str) -> list[str]:
    out = []
    for name, b in sorted(ops.backends_registry().items()):
        if name in measured.EXCLUDED.get(DEVICE.type, ()) or b.unavailable_reason():
            continue
        if DEVICE.type in b.devices() and op in b.ops.implemented():
            out.append(name)
    return out


def _tensor(shape, dtype, fmt, grad, scale=1.0):
    t = (torch.randn(*shape, device=DEVICE) * scale).to(dtype)
    if fmt == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(grad)


def _attention(shape, dtype, fmt, grad):
    c = shape[1]
    r = max(c // 16, 1)
    weights = (_tensor((r, c, 1, 1), dtype, "contiguous", grad, c ** -0.5),
               _tensor((c, r, 1, 1), dtype, "contiguous", grad, r ** -0.5),
               _tensor((1, 2, 7, 7), dtype, "contiguous", grad, 0.1))
    sets = [(_tensor(shape, dtype, fmt, grad), *weights) for _ in range(2)]

    def make(backend):
        def call(h, fc1, fc2, sa):
            if not grad:
                with torch.no_grad():
                    return ops.channel_spatial_attention(h, fc1, fc2, sa, backend=backend)
            out = ops.channel_spatial_attention(h, fc1, fc2, sa, backend=backend)
            out.backward(torch.ones_like(out))
        return call
    return make, sets


def _dwconv(shape, dtype, fmt, grad, training):
    c = shape[1]
    w = _tensor((c, 1, 3, 3), dtype, "contiguous", grad, 1 / 3)
    bn = BatchNormState(torch.rand(c, device=DEVICE).add_(0.5).to(dtype).requires_grad_(grad),
                        torch.randn(c, device=DEVICE).to(dtype).requires_grad_(grad),
                        torch.randn(c, device=DEVICE).mul_(0.1).to(dtype),
                        torch.rand(c, device=DEVICE).add_(0.5).to(dtype))
    sets = [(_tensor(shape, dtype, fmt, grad),) for _ in range(2)]

    def make(backend):
        def call(x):
            if not grad:
                with torch.no_grad():
                    return ops.dwconv_bn_gelu(x, w, bn, training, backend=backend)
            y, avg, mx = ops.dwconv_bn_gelu(x, w, bn, training, backend=backend)
            # the attention consumes avg and max too: their gradients flow back into x
            torch.autograd.backward([y, avg, mx], [torch.ones_like(y), torch.ones_like(avg),
                                                   torch.ones_like(mx)])
        return call
    return make, sets


def _autocast(dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(DEVICE.type, dtype=dtype)


def _block(shape, dtype, fmt, training):
    c = shape[1]
    torch.manual_seed(0)
    reference = MBCSA(c, c).to(DEVICE)
    with torch.no_grad():
        for bn in reference.batch_norms():
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    sets = [(_tensor(shape, torch.float32, fmt, training),) for _ in range(2)]

    def make(backend):
        m = MBCSA(c, c, backend=backend).to(DEVICE).train(training)
        m.load_state_dict(reference.state_dict())

        def call(x):
            with _autocast(dtype):
                if not training:
                    with torch.no_grad():
                        return m(x)
                out = m(x)
            out.float().sum().backward()
        return call
    return make, sets


def build(op: str, grad: bool, dtype: torch.dtype, fmt: str, size: tuple) -> tuple:
    """(shape of the main input, make(backend) -> call, input sets)."""
    b, c, s = size
    if op in BLOCKS:
        shape = (b, c, s, s)
        return shape, *_block(shape, dtype, fmt, op == "mbcsa_train")
    shape = (b, 4 * c, s, s)
    if op == "channel_spatial_attention":
        return shape, *_attention(shape, dtype, fmt, grad)
    return shape, *_dwconv(shape, dtype, fmt, grad, op == "dwconv_bn_gelu_train")


def time_interleaved(calls: dict[str, Callable], sets: list[tuple], budget_s: float,
                     min_rounds: int, max_rounds: int) -> dict[str, float]:
    """Median seconds per backend; each round runs every backend once, in rotating order."""
    clock = CudaEventClock() if ON_GPU else time.perf_counter
    one = {}
    for name, call in calls.items():
        call(*sets[0])  # compilation, autotuning, caches
        sync()
        start = time.perf_counter()
        call(*sets[0])
        sync()
        one[name] = time.perf_counter() - start
    rounds = int(min(max_rounds, max(min_rounds, math.ceil(budget_s / sum(one.values())))))
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        args = sets[r % len(sets)]
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            flush_l2()
            start = clock()  # a CUDA event clock waits for the work queued before it
            calls[name](*args)
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _commit() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                              cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _calls(op: str, grad: bool, dtype: str, fmt: str, size: tuple) -> tuple:
    """(main input shape, backend -> call, input sets) of one case."""
    shape, make, sets = build(op, grad, getattr(torch, dtype), fmt, size)
    return shape, {n: make(n) for n in candidates(measured.WORKLOADS[op])}, sets


def measure(smoke: bool, passes: int) -> list[dict]:
    """Every case timed once per pass (the passes minutes apart); each case keeps the pass with
    the smallest total time, the one least disturbed by other work on the machine."""
    kind = DEVICE.type
    sizes = [(2, 8, 6)] if smoke else SIZES[kind]
    dtypes = ["float32"] if smoke else DTYPES[kind]
    formats = ["channels_last"] if smoke else list(measured.FORMATS)
    budget = (0.0, 1, 1) if smoke else (BUDGET_S, MIN_ROUNDS, MAX_ROUNDS)
    cases = [(op, grad, dtype, fmt, size) for op, grad in CASES for dtype in dtypes
             for fmt in formats for size in sizes]
    runs: dict[tuple, list[tuple]] = {case: [] for case in cases}
    # Every case runs once, untimed, before the first pass: the process's state then is the same
    # in every pass (on a 2-core Xeon, the bfloat16 backward cases roughly halved the page faults
    # of the large eager ops measured after them, making those up to 3x faster).
    for case in cases:
        _, calls, sets = _calls(*case)
        for call in calls.values():
            call(*sets[0])
    for p in range(passes):
        for case in cases:
            op, grad, dtype, fmt, size = case
            shape, calls, sets = _calls(*case)
            medians = time_interleaved(calls, sets, *budget)
            runs[case].append((shape, {n: round(t * 1e3, 4) for n, t in medians.items()}))
            print(f"pass {p + 1}/{passes} {op:26s} {dtype:9s} {fmt:14s} grad={grad!s:5s} "
                  f"{'x'.join(map(str, shape)):14s} "
                  + "  ".join(f"{n} {t * 1e3:9.3f} ms" for n, t in medians.items()), flush=True)
    entries = []
    for (op, grad, dtype, fmt, _), timed in runs.items():
        shape, ms = min(timed, key=lambda run: sum(run[1].values()))
        entries.append({"op": op, "dtype": dtype, "format": fmt, "grad": grad,
                        "shape": list(shape), "ms": ms, "winner": measured.ranking_of(ms)[0],
                        "autocast": op in BLOCKS and dtype != "float32"})
    return entries


def write(path: str, kind: str, record: dict) -> None:
    """Replace kind's record in the table at path, keeping the other kinds'."""
    table = {"schema": measured.SCHEMA, "devices": {}}
    if os.path.exists(path):
        with open(path) as f:
            table = json.load(f)
    table["devices"][kind] = record
    write_text_atomic(_dumps(table), path)


def _dumps(table: dict) -> str:
    """Indented JSON with one entry per line, so that a diff shows which cases changed."""
    marked = {**table, "devices": {kind: {**record, "entries": f"@{kind}@"}
                                   for kind, record in table["devices"].items()}}
    text = json.dumps(marked, indent=1)
    for kind, record in table["devices"].items():
        rows = ",\n".join("    " + json.dumps(e) for e in record["entries"])
        text = text.replace(f'"@{kind}@"', "[\n" + rows + "\n   ]")
    return text + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=measured.TABLE_FILE,
                   help="table to update (default: the package's, %(default)s)")
    p.add_argument("--passes", type=int, default=3,
                   help="times each case is measured, minutes apart (default: %(default)s)")
    p.add_argument("--smoke", action="store_true",
                   help="one tiny size, float32, one call per backend (a check that it runs)")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    kind = DEVICE.type
    load_start = os.getloadavg()[0]
    commit = _commit()  # before measuring: the tree may move on during the run
    started = time.time()
    passes = 1 if args.smoke else args.passes
    entries = measure(args.smoke, passes)
    record = {
        "device": torch.cuda.get_device_name(DEVICE) if ON_GPU else cpu_name(),
        "threads": torch.get_num_threads(), "passes": passes,
        "torch": torch.__version__,
        "hdkd": hdkd.__version__, "hdkd_commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average": [load_start, os.getloadavg()[0]],
        "seconds": round(time.time() - started, 1),
        "command": " ".join(["python", "benchmarks/choose_backends.py", *argv]),
        "entries": entries,
    }
    write(args.out, kind, record)
    table = measured.Table.load(args.out)
    print(f"\n{kind}: {record['device']}, {record['threads']} threads, {record['seconds']} s, "
          f"load {load_start:.1f} -> {record['load_average'][1]:.1f}; wrote {args.out}")
    for line in measured.summary_lines(kind, table):
        print("  " + line)


if __name__ == "__main__":
    main()
