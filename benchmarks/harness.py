"""Timing and per-benchmark metrics shared by the suites.

GPU: a pytest-benchmark timer built on CUDA events (each reading records an event on the current
stream and waits for it), the L2 cache flushed before every round, inputs rotated between rounds.
CPU: time.perf_counter, inputs rotated. Every round runs one call; the median is what is reported.
"""
from __future__ import annotations

import itertools
import json
import math
import platform
import resource
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"

# Per benchmark: rounds = time budget / one call, within [MIN_ROUNDS, MAX_ROUNDS].
BUDGET_S = 1.0 if ON_GPU else 2.0
MIN_ROUNDS = 10 if ON_GPU else 3
MAX_ROUNDS = 500 if ON_GPU else 50
L2_FLUSH_BYTES = 256 * 2**20


def sync() -> None:
    if ON_GPU:
        torch.cuda.synchronize()


class CudaEventClock:
    """A clock in seconds read off CUDA events: timer() before and after a call measures the GPU
    time between the two points of the stream, not the host's launch time."""

    def __init__(self):
        self.origin = torch.cuda.Event(enable_timing=True)
        self.origin.record()
        self.origin.synchronize()

    def __call__(self) -> float:
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        e.synchronize()
        return self.origin.elapsed_time(e) / 1e3


_l2_buffer: Optional[torch.Tensor] = None


def flush_l2() -> None:
    global _l2_buffer
    if ON_GPU:
        if _l2_buffer is None:
            _l2_buffer = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=DEVICE)
        _l2_buffer.zero_()


def copy_bandwidth() -> float:
    """Device memory bandwidth in bytes/s from a large copy (bytes read + bytes written), median of
    several runs, measured in this session."""
    n = (2**28 if ON_GPU else 2**26)  # float32 elements: 1 GiB on the GPU, 256 MiB on the CPU
    src = torch.randn(n, device=DEVICE)
    dst = torch.empty_like(src)
    times = []
    for _ in range(12 if ON_GPU else 6):
        if ON_GPU:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t)
    return 2 * src.numel() * src.element_size() / sorted(times[1:])[len(times[1:]) // 2]


def peak_memory(fn: Callable, args: tuple) -> tuple[Optional[int], str]:
    """Peak bytes allocated during one call above what was allocated when it started."""
    if ON_GPU:
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(*args)
        sync()
        return torch.cuda.max_memory_allocated() - base, "torch.cuda.max_memory_allocated - start"
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(*args)
    # running sum of each op's own allocations minus frees, in op start order: the peak above
    # the start (allocations freed inside a single op are not seen)
    deltas = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events())
    running = list(itertools.accumulate(d for _, d in deltas))
    return max([0, *running]), "torch.profiler CPU memory records, peak of the running sum"


@dataclass
class Workload:
    """What one benchmark measures, independent of the implementation (impl) running it."""

    level: str                      # ops, blocks, models, train_step, distill_step
    name: str                       # e.g. "mbcsa_eval 96->96 @56"
    dtype: str
    batch: int
    flops: int                      # forward(+backward) FLOPs, fvcore convention
    flops_rule: str
    bytes: int                      # minimal bytes moved (see floors.py)
    bytes_rule: str
    images: bool = False            # report images/s
    training: bool = False          # report peak memory
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.level}/{self.name}/b{self.batch}/{self.dtype}"


class Session:
    """Session-wide state: the measured bandwidth and every median, for the peers' speed-ups."""

    def __init__(self):
        self._bandwidth: Optional[float] = None
        self.medians: dict[str, dict[str, float]] = {}

    @property
    def bandwidth(self) -> float:
        if self._bandwidth is None:
            self._bandwidth = copy_bandwidth()
        return self._bandwidth


def run(benchmark, session: Session, workload: Workload, impl: str,
        fn: Callable, input_sets: list[tuple]) -> None:
    """Benchmark fn(*inputs) for the rotating input sets and fill benchmark.extra_info."""
    benchmark.group = workload.key
    info = benchmark.extra_info
    info.update(level=workload.level, workload=workload.name, impl=impl, dtype=workload.dtype,
                batch=workload.batch, device=_device_name(), **workload.extra)
    flops = workload.flops
    info.update(flops=flops, flops_rule=workload.flops_rule, bytes=workload.bytes,
                bytes_rule=workload.bytes_rule)
    if not benchmark.enabled:  # --benchmark-disable: pedantic runs the body once (smoke mode)
        benchmark.pedantic(fn, args=input_sets[0])
        sync()
        return
    if ON_GPU:
        benchmark._timer = CudaEventClock()  # pytest-benchmark reads the clock through _timer
    # two warm-up calls (compilation, autotuning); the second also measures the peak memory of
    # training workloads and sets the number of rounds
    fn(*input_sets[0])
    sync()
    start = time.perf_counter()
    if workload.training:
        info["peak_memory_bytes"], info["peak_memory_method"] = peak_memory(fn, input_sets[0])
    else:
        fn(*input_sets[0])
        sync()
    one = time.perf_counter() - start
    rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, math.ceil(BUDGET_S / max(one, 1e-9)))))
    sets = itertools.cycle(input_sets)

    def setup():
        flush_l2()
        return next(sets), {}

    benchmark.pedantic(fn, setup=setup, rounds=rounds, warmup_rounds=0, iterations=1)
    median = benchmark.stats.stats.median
    session.medians.setdefault(workload.key, {})[impl] = median
    bandwidth = session.bandwidth
    info.update(
        median_s=median, tflops_per_s=flops / median / 1e12,
        gbytes_per_s=workload.bytes / median / 1e9, bandwidth_gbytes_per_s=bandwidth / 1e9,
        bytes_floor_s=workload.bytes / bandwidth,
        fraction_of_bytes_floor=workload.bytes / bandwidth / median)
    if workload.images:
        info["images_per_s"] = workload.batch / median


def _device_name() -> str:
    if ON_GPU:
        return torch.cuda.get_device_name(DEVICE)
    return f"cpu ({torch.get_num_threads()} threads)"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return f"CPU: {names[0] if names else platform.processor() or platform.machine()}"


def minor_faults() -> int:
    """The process's minor page faults so far: memory the allocator handed back to the system
    and takes again, a cost that depends on the process's allocation history (NOTES.md)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def write_cpu_report(path: str, **fields) -> None:
    """A CPU script's results as JSON at path, with the CPU's name, torch's version and its
    thread count."""
    with open(path, "w") as f:
        json.dump({"machine": cpu_name(), "torch": torch.__version__,
                   "threads": torch.get_num_threads(), **fields}, f, indent=1)


def fill_speedups(benchmarks: list[dict]) -> None:
    """Speed-ups over the eager, compile and ONNX Runtime peers of the same workload (those that
    ran), from the medians of one run's JSON (so a peer measured after a benchmark still counts)."""
    medians: dict[str, dict[str, float]] = {}
    for b in benchmarks:
        medians.setdefault(b["group"], {})[b["extra_info"].get("impl")] = b["stats"]["median"]
    for b in benchmarks:
        peers, median = medians[b["group"]], b["stats"]["median"]
        for peer in ("eager", "compile", "onnxruntime"):
            b["extra_info"][f"speedup_vs_{peer}"] = peers[peer] / median if peer in peers else None
