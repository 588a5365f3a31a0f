"""benchmarks/cpu_inference_interleaved.py end to end on one small case (the eager peers and ONNX
Runtime; compiling would cost the smoke run a minute): every implementation timed, ratios against
hdkd, the JSON written."""
import json

import pytest

import cpu_inference_interleaved
from harness import ON_GPU

pytestmark = pytest.mark.skipif(ON_GPU, reason="CPU inference suite")


def test_interleaved_smoke(tmp_path):
    out = tmp_path / "interleaved.json"
    cpu_inference_interleaved.main(["--rounds", "2", "--models", "hdkd", "--precisions",
                                    "float32", "--impls", "hdkd", "eager", "onnxruntime",
                                    "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["machine"].startswith("CPU: ")
    (result,) = report["results"]
    assert {"hdkd", "eager"} <= set(result["median_ms"]) <= {"hdkd", "eager", "onnxruntime"}
    assert all(t > 0 for t in result["median_ms"].values())
    assert set(result["hdkd_speedup"]) == set(result["median_ms"]) - {"hdkd"}
    assert set(result["page_faults_per_call"]) == set(result["median_ms"])
    assert all(f >= 0 for f in result["page_faults_per_call"].values())
