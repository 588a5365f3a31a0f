"""The benchmark plumbing itself (runs in smoke mode; --benchmark-only skips it): speed-ups from
one run's medians, the report's table and chart, the bytes floors, the GPU clock."""
from __future__ import annotations

import json

import pytest
import torch

import floors, report
from harness import CudaEventClock, fill_speedups


def _bench(group, impl, median, **extra):
    return {"name": f"test[{impl}]", "group": group, "stats": {"median": median},
            "extra_info": {"level": "blocks", "workload": group, "impl": impl, "dtype": "float32",
                           "batch": 8, **extra}}


def test_speedups_use_peers_of_the_same_workload_whatever_the_order():
    benches = [_bench("a", "triton", 1.0), _bench("a", "eager", 4.0), _bench("a", "compile", 2.0),
               _bench("b", "eager", 3.0)]
    fill_speedups(benches)
    triton, eager, comp, other = (b["extra_info"] for b in benches)
    assert (triton["speedup_vs_eager"], triton["speedup_vs_compile"]) == (4.0, 2.0)
    assert (eager["speedup_vs_eager"], eager["speedup_vs_compile"]) == (1.0, 0.5)
    assert comp["speedup_vs_eager"] == 2.0
    assert other["speedup_vs_eager"] == 1.0 and other["speedup_vs_compile"] is None


def test_report_writes_table_and_chart(tmp_path):
    benches = [_bench("mbcsa eval fwd 96->96@56", "eager", 0.004, flops=2e9, images_per_s=10.0,
                      peak_memory_bytes=2 ** 21, peak_memory_method="m"),
               _bench("mbcsa eval fwd 96->96@56", "compile", 0.002, flops=2e9)]
    fill_speedups(benches)
    data = {"benchmarks": benches, "datetime": "now",
            "machine_info": {"device": "test device", "torch": "x", "backends": {"torch": "ok"}},
            "commit_info": {"id": "abc", "dirty": False, "branch": "main"}}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    assert report.main([str(path)]) == 0
    md = (tmp_path / "run.md").read_text()
    assert "test device" in md and "abc" in md
    eager_row = [line for line in md.splitlines() if "| eager |" in line][0].split("|")
    assert eager_row[5].strip() == "4.000"      # median ms
    assert eager_row[12].strip() == "0.50"      # vs compile
    assert eager_row[13].strip() == "2.0"       # peak MiB
    assert (tmp_path / "run.png").stat().st_size > 1000


def test_floors_follow_the_stated_counts():
    # docs/performance.md, section 1: the attention reads h three times and writes once; the
    # block reads x, writes the output and writes and reads the hidden activation once
    assert floors.attention_bytes(10, 2, backward=False)[0] == 80
    assert floors.block_bytes(10, 20, 40, 4, params=100, backward=False)[0] == 4 * 110 + 100
    assert floors.train_step_bytes(10, 4, 100)[0] == 40 + 900


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_event_clock_measures_gpu_time():
    clock = CudaEventClock()
    a = torch.randn(4096, 4096, device="cuda")
    t0 = clock()
    for _ in range(20):
        a = a @ a.T / 64
    t1 = clock()
    assert t1 - t0 > 1e-4  # twenty 4096^3 products take far more than 0.1 ms
