"""benchmarks/cpu_inference_stages.py end to end on the smoke size: every block timed and given
its floors, ONNX Runtime's kernel time credited to every block, the JSON written."""
import json

import pytest

import cpu_inference_stages
from harness import ON_GPU

pytestmark = pytest.mark.skipif(ON_GPU, reason="CPU inference suite")


def test_stages_smoke(tmp_path):
    out = tmp_path / "stages.json"
    cpu_inference_stages.main(["--rounds", "2", "--model", "hdkd", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["machine"].startswith("CPU: ")
    result = report["result"]
    names = [b["block"] for b in result["blocks"]]
    assert names == ["stage1.0", "stage1.1", "stage2.0", "stage2.1", "stage3.0", "stage3.1",
                     "stage3.2", "head"]
    for b in result["blocks"]:
        assert b["macs"] > 0 and b["bytes"] > 0 and b["floor_ms"] > 0 and b["hdkd_ms"] > 0
        assert b["hdkd_page_faults_per_call"] >= 0
    total = result["total"]
    assert total["hdkd_ms"] == pytest.approx(sum(b["hdkd_ms"] for b in result["blocks"]))
    pytest.importorskip("onnxruntime")
    # every block's ONNX nodes were found by their name scopes
    assert all(b["onnxruntime_kernels_ms"] > 0 for b in result["blocks"])
    assert total["onnxruntime_wall_ms"] > 0
