"""pytest configuration for the benchmark suites: smoke mode, the session state, the machine
description saved with every JSON, speed-ups over the peers, and a short table at the end."""
from __future__ import annotations

import os

import pytest
import torch

import cases
from harness import DEVICE, ON_GPU, Session, cpu_name, fill_speedups

_SESSION = Session()
_LOAD_AT_START: list[float] = []
THREADS_ENV = "HDKD_BENCH_THREADS"  # optional torch CPU thread count for the whole session


def pytest_configure(config):
    cases.SMOKE = bool(config.getoption("benchmark_disable", False))
    _LOAD_AT_START[:] = os.getloadavg()
    if os.environ.get(THREADS_ENV):
        torch.set_num_threads(int(os.environ[THREADS_ENV]))


@pytest.fixture(scope="session")
def session() -> Session:
    return _SESSION


def pytest_benchmark_update_machine_info(config, machine_info):
    import hdkd

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    machine_info.update(
        device=torch.cuda.get_device_name(DEVICE) if ON_GPU else cpu_name(),
        torch=torch.__version__, cuda=torch.version.cuda, triton=triton_version,
        hdkd=hdkd.__version__, backends=hdkd.backends(), torch_threads=torch.get_num_threads(),
        load_average=list(_LOAD_AT_START), smoke=cases.SMOKE)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    fill_speedups(output_json["benchmarks"])
    if _SESSION.medians:
        output_json["machine_info"]["copy_bandwidth_gbytes_per_s"] = _SESSION.bandwidth / 1e9
    output_json["machine_info"]["load_average_end"] = list(os.getloadavg())


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables: the short table comes last
def pytest_terminal_summary(terminalreporter):
    if not _SESSION.medians:
        return
    terminalreporter.section("hdkd benchmarks: median per workload and speed-ups (same run)")
    for key, by_impl in _SESSION.medians.items():
        eager, comp = by_impl.get("eager"), by_impl.get("compile")
        for impl, median in by_impl.items():
            parts = [f"{key:58s} {impl:8s} {median * 1e3:10.3f} ms"]
            if eager:
                parts.append(f"x{eager / median:5.2f} vs eager")
            if comp:
                parts.append(f"x{comp / median:5.2f} vs compile")
            terminalreporter.write_line("  ".join(parts))
