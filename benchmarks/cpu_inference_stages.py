"""CPU inference block by block: the default model's time per block beside ONNX Runtime's, each
against its floors, one process.

    python benchmarks/cpu_inference_stages.py [--model hdkd] [--batch 1] [--rounds 40]
        [--threads 2] [--json PATH]

The blocks are stage1..3's children and the head (what follows stage 3: the DFLT and the
classifiers, or the teacher's pooling and classifier).
- hdkd: the default model's blocks called in turn under inference_mode, with each block's
  median time and its page faults per call.
- ONNX Runtime: its own profiler, on the export that test_cpu_inference.py runs. Each node's
  kernel time is credited to the block its ONNX node came from, per the exporter's
  `pkg.torch.onnx.name_scopes` metadata. A node that ORT's optimizer made or renamed takes the
  block of the next node that kept its name.
Every round runs one hdkd forward and one ONNX Runtime run, with a pause after each (see
cpu_inference_interleaved.py). The first fifth of the rounds is dropped.

Floors per block:
- FLOP floor: fvcore's multiply-adds over the faster of a matmul's and a convolution's
  multiply-add rates, measured in the same process (peak_macs_per_s);
- bytes floor: input, output and parameters once each, over the copy bandwidth measured in the
  same process.
The floor is the larger of the two.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import sys
import time
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import floors  # noqa: E402
import harness  # noqa: E402
import test_cpu_inference as suite  # noqa: E402
from cpu_inference_interleaved import PAUSE_S  # noqa: E402
from hdkd.flops import flop_analysis  # noqa: E402

STAGES = ("stage1", "stage2", "stage3")


def blocks(model) -> list[tuple[str, object]]:
    out = [(f"{s}.{j}", b) for s in STAGES for j, b in enumerate(getattr(model, s))]
    return out + [("head", model.forward_head)]


def block_of(scopes: list[str]) -> str | None:
    """The block of a node from its name scopes (['', 'stage2', 'stage2.1', ...])."""
    if len(scopes) > 2 and scopes[1] in STAGES:
        return scopes[2]
    if len(scopes) > 1 and scopes[1] and scopes[1] not in STAGES:
        return "head"
    return None


def onnx_node_blocks(exported, optimized) -> dict[str, str]:
    """Block of every node of the optimized ONNX graph (see the module doc)."""
    known = {}
    for node in exported.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        scopes = meta.get("pkg.torch.onnx.name_scopes")
        block = block_of(ast.literal_eval(scopes)) if scopes else None
        if block is not None:
            known[node.name] = block
    out, nxt = {}, "head"
    for node in reversed(optimized.graph.node):
        nxt = known.get(node.name, nxt)
        out[node.name] = nxt
    return out


def ort_profiled(name: str):
    """((run(x) -> seconds, kernels(skip) -> {block: [seconds per run]}), None) for ONNX
    Runtime with its profiler on, or (None, the reason it is left out)."""
    path, reason = suite.onnx_export(name)
    if path is None:
        return None, f"ONNX Runtime left out: {reason}"
    import onnx
    import onnxruntime as ort
    options = suite.onnx_session_options()
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(os.path.dirname(path), "profile")
    options.optimized_model_filepath = path + ".optimized.onnx"
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    node_block = onnx_node_blocks(onnx.load(path), onnx.load(options.optimized_model_filepath))

    def run(x):
        start = time.perf_counter()
        session.run(None, {input_name: x.numpy()})
        return time.perf_counter() - start

    def kernels(skip_runs: int) -> dict[str, list[float]]:
        with open(session.end_profiling()) as f:
            events = json.load(f)
        per_run = []
        for e in events:
            if e.get("cat") == "Session" and e["name"] == "model_run":
                per_run.append(defaultdict(float))
            elif e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and per_run:
                node = e["name"][: -len("_kernel_time")]
                per_run[-1][node_block.get(node, "head")] += e["dur"] / 1e6
        out = defaultdict(list)
        for r in per_run[skip_runs:]:
            for block, s in r.items():
                out[block].append(s)
        return out
    return (run, kernels), None


def peak_macs_per_s() -> float:
    """Multiply-adds per second of the faster of two compute-bound probes: a 2048-square
    float32 matmul (MKL, which takes a slower path on AMD CPUs) and a 3 x 3 convolution of 256
    channels at 64 x 64 in channels_last (oneDNN)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x = torch.randn(1, 256, 64, 64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3).contiguous(memory_format=torch.channels_last)
    probes = [(lambda: torch.mm(a, b), 2048**3),
              (lambda: torch.nn.functional.conv2d(x, w, None, 1, 1), 64 * 64 * 256 * 256 * 9)]
    rates = []
    with torch.inference_mode():
        for fn, macs in probes:
            times = []
            for _ in range(7):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            rates.append(macs / statistics.median(times[1:]))
    return max(rates)


def measure(name: str, batch: int, rounds: int) -> dict:
    size = suite._size()
    inputs = [torch.randn(batch, 3, size, size) for _ in range(2)]
    model = suite._model(name, "auto")
    parts = blocks(model)
    reference = suite._model(name, "torch")
    with torch.no_grad():
        macs = flop_analysis(reference, (inputs[0][:1],)).by_module()
    block_macs = {b: batch * macs[b] for b, _ in parts if b != "head"}
    block_macs["head"] = batch * macs[""] - sum(block_macs.values())
    ort, reason = ort_profiled(name)
    if reason:
        print(reason)
    rate, bandwidth = peak_macs_per_s(), harness.copy_bandwidth()

    times, faults, ort_wall = defaultdict(list), defaultdict(int), []
    shapes, skip = {}, rounds // 5
    with torch.inference_mode():
        for r in range(rounds):
            t = inputs[r % 2]
            for block, fn in parts:
                before = harness.minor_faults()
                start = time.perf_counter()
                y = fn(t)
                times[block].append(time.perf_counter() - start)
                faults[block] += harness.minor_faults() - before
                shapes[block] = (t.numel(), y.numel())
                t = y
            time.sleep(PAUSE_S)
            if ort:
                ort_wall.append(ort[0](inputs[r % 2]))
                time.sleep(PAUSE_S)
    ort_blocks = ort[1](skip) if ort else {}

    rows = []
    for block, fn in parts:
        params = (floors.param_bytes(fn) if block != "head" else floors.param_bytes(model)
                  - sum(floors.param_bytes(m) for b, m in parts if b != "head"))
        n_in, n_out = shapes[block]
        nbytes = 4 * (n_in + n_out) + params
        floor = max(block_macs[block] / rate, nbytes / bandwidth)
        ms = statistics.median(times[block][skip:]) * 1e3
        row = {"block": block, "macs": block_macs[block], "bytes": nbytes,
               "floor_ms": floor * 1e3, "hdkd_ms": ms, "hdkd_over_floor": ms / (floor * 1e3),
               "hdkd_page_faults_per_call": faults[block] / rounds}
        if ort_blocks.get(block):
            row["onnxruntime_kernels_ms"] = statistics.median(ort_blocks[block]) * 1e3
        rows.append(row)
    total = {"hdkd_ms": sum(r["hdkd_ms"] for r in rows),
             "floor_ms": sum(r["floor_ms"] for r in rows)}
    if ort:
        total["onnxruntime_wall_ms"] = statistics.median(ort_wall[skip:]) * 1e3
        total["onnxruntime_kernels_ms"] = sum(r.get("onnxruntime_kernels_ms", 0) for r in rows)
    return {"model": name, "batch": batch, "size": size, "rounds": rounds,
            "peak_macs_per_s": rate, "copy_bytes_per_s": bandwidth, "blocks": rows,
            "total": total}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="hdkd", choices=suite.MODELS)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error("--rounds must be at least 2")
    torch.set_num_threads(args.threads)
    r = measure(args.model, args.batch, args.rounds)
    print(f"{harness.cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.model} batch {args.batch} at {r['size']} px, {args.rounds} rounds; "
          f"peak {r['peak_macs_per_s'] / 1e9:.1f} G multiply-adds/s, "
          f"copy {r['copy_bytes_per_s'] / 1e9:.1f} GB/s")
    print(f"{'block':10s} {'M MAC':>8s} {'floor ms':>9s} {'hdkd ms':>8s} {'x floor':>8s} "
          f"{'faults':>7s} {'ORT ms':>7s}")
    for b in r["blocks"]:
        ort = b.get("onnxruntime_kernels_ms")
        print(f"{b['block']:10s} {b['macs'] / 1e6:8.1f} {b['floor_ms']:9.2f} {b['hdkd_ms']:8.2f} "
              f"{b['hdkd_over_floor']:8.2f} {b['hdkd_page_faults_per_call']:7.0f} "
              f"{'-' if ort is None else f'{ort:.2f}':>7s}")
    print("total", {k: round(v, 2) for k, v in r["total"].items()})
    if args.json:
        harness.write_cpu_report(args.json, result=r)


if __name__ == "__main__":
    main()
