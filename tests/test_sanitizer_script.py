"""tests/run_compute_sanitizer.sh, driven by a stand-in compute-sanitizer (no GPU needed): the
tools it runs, the environment they see, its time budget, and that it builds nothing."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "run_compute_sanitizer.sh"


def _fake_sanitizer(tmp_path: Path, body: str) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "compute-sanitizer"
    fake.write_text("#!/usr/bin/env bash\n"
                    f'echo "$* | caching=$PYTORCH_NO_CUDA_MEMORY_CACHING" >> {tmp_path}/calls\n'
                    + body)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_memcheck_initcheck_synccheck_without_caching_and_without_building(tmp_path):
    env = _fake_sanitizer(tmp_path, "exit 0\n")
    run = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert [c.split()[1] for c in calls] == ["memcheck", "initcheck", "synccheck"]
    assert all(c.endswith("caching=1") for c in calls)
    assert all("--error-exitcode 1" in c and "-m pytest" in c for c in calls)
    assert not any("pip" in c or "setup.py" in c for c in calls)
    assert "pip" not in SCRIPT.read_text().split("set -euo pipefail")[1]


def test_a_reported_error_or_an_overrun_fails_the_run(tmp_path):
    env = _fake_sanitizer(tmp_path, '[ "$2" = initcheck ] && exit 1\n'
                                    '[ "$2" = synccheck ] && sleep 5\nexit 0\n')
    env["HDKD_SANITIZER_BUDGET_S"] = "6"  # 2 s per tool: synccheck runs past it
    run = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1
    assert "initcheck: FAILED" in run.stderr and "synccheck: FAILED" in run.stderr
    assert "memcheck: FAILED" not in run.stderr
