"""CPU inference of the default model beside its peers with the calls interleaved, one process.

    python benchmarks/cpu_inference_interleaved.py [--batch 1] [--rounds 40] [--threads 2]
        [--models hdkd hdkd_student hdkd_teacher] [--precisions float32 bfloat16]
        [--impls hdkd eager compile compile_hdkd onnxruntime] [--json PATH]

test_cpu_inference.py times each implementation in its own block of rounds, one after another
in one process. The process's state then differs from block to block: the allocator's, above
all, whose page faults on fresh buffers cost torch.compile of the reference 2.5 to 4.6 thousand
faults per batch-1 call, depending on what ran before it (benchmarks/NOTES.md). Here every round
calls each implementation once, in a new random order, so that all of them share that state, and
waits PAUSE_S after each call, so that none starts while another's thread pool still spins (ONNX
Runtime's does after a run: without a pause, the call after it measured up to 1.5x slower; with
0.02 s, the hdkd forward after it still took 48.4 ms against 35.4, NOTES.md). The
medians and their ratios are what is reported. Same models, weights and inputs as
test_cpu_inference.py (its _runner); ONNX Runtime is the float32 peer only, and is left out,
with its reason printed, where it cannot run.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import test_cpu_inference as suite  # noqa: E402

IMPLS = ["hdkd", "eager", "compile", "compile_hdkd", "onnxruntime"]
PAUSE_S = 0.1  # between calls: ONNX Runtime's pool spins on after a run, taking the cores


def _runners(name: str, batch: int, precision: str, impls: list[str]) -> dict:
    out = {}
    for impl in impls:
        try:
            out[impl] = suite._runner(name, impl, batch, precision)[0]
        except pytest.skip.Exception as e:  # ONNX Runtime: not installed, or no bfloat16
            print(f"{name} {precision}: {impl} left out: {e}")
    return out


def measure(name: str, batch: int, precision: str, rounds: int, seed: int,
            impls: list[str] = IMPLS) -> dict:
    size = suite._size()
    inputs = [torch.randn(batch, 3, size, size) for _ in range(2)]
    runners = _runners(name, batch, precision, impls)
    # after the last _runner (each compiled one resets dynamo): compilation, caches, folding
    for fn in runners.values():
        for x in inputs * 2:
            fn(x)
    times = {impl: [] for impl in runners}
    faults = {impl: 0 for impl in runners}
    order = list(runners)
    rng = random.Random(seed)
    for r in range(rounds):
        rng.shuffle(order)
        for impl in order:
            x = inputs[r % 2]
            before = harness.minor_faults()
            start = time.perf_counter()
            runners[impl](x)
            times[impl].append(time.perf_counter() - start)
            faults[impl] += harness.minor_faults() - before
            time.sleep(PAUSE_S)
    med = {impl: statistics.median(t) for impl, t in times.items()}
    return {"model": name, "batch": batch, "precision": precision, "rounds": rounds,
            "median_ms": {k: v * 1e3 for k, v in med.items()},
            "hdkd_speedup": {k: v / med["hdkd"] for k, v in med.items() if k != "hdkd"},
            "page_faults_per_call": {k: v / rounds for k, v in faults.items()}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=suite.MODELS)
    p.add_argument("--precisions", nargs="+", default=suite.PRECISIONS)
    p.add_argument("--impls", nargs="+", default=IMPLS, choices=IMPLS)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if "hdkd" not in args.impls:
        p.error("--impls must include hdkd (the ratios are against it)")
    torch.set_num_threads(args.threads)
    # two compiled models alive at once run the same blocks' forward code: room for both in
    # dynamo's per-code cache, or one of them silently runs eagerly
    torch._dynamo.config.recompile_limit = 64
    results = []
    print(f"{harness.cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch}, {args.rounds} interleaved rounds")
    for precision in args.precisions:
        for name in args.models:
            r = measure(name, args.batch, precision, args.rounds, seed=len(results),
                        impls=args.impls)
            results.append(r)
            ms = "  ".join(f"{k} {v:.1f}" for k, v in r["median_ms"].items())
            ratios = "  ".join(f"{k} {v:.2f}x" for k, v in r["hdkd_speedup"].items())
            faults = "  ".join(f"{k} {v:.0f}" for k, v in r["page_faults_per_call"].items())
            print(f"{name} {precision}: ms {ms} | hdkd vs: {ratios} | page faults per call: "
                  f"{faults}", flush=True)
    if args.json:
        harness.write_cpu_report(args.json, results=results)


if __name__ == "__main__":
    main()
