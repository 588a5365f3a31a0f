"""benchmarks/distill_vs_original.py: both designs run, compute the same loss, report a ratio."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "distill_vs_original.py"


def _load():
    spec = importlib.util.spec_from_file_location("distill_vs_original", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_single_pass_and_original_design_agree_and_are_timed(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert _load().main(["--img-size", "16", "--batch-size", "2", "--steps", "1", "--warmup", "0",
                         "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["first_loss"]["hdkd"] == pytest.approx(r["first_loss"]["original"], rel=1e-5)
    assert set(r["median_step_s"]) == {"hdkd", "original"}
    assert all(t > 0 for t in r["median_step_s"].values())
    assert r["speedup"] == pytest.approx(r["median_step_s"]["original"] / r["median_step_s"]["hdkd"])
    assert "speed-up of hdkd's single pass" in capsys.readouterr().out
