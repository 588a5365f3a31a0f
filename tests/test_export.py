"""Exports (hdkd.export, `hdkd export`): ONNX files run by onnxruntime and torch.export programs
compute what the default model computes, hold standard operators only, and are written only
once they pass their check."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from hdkd.cli import main
from hdkd.distill import checkpoint as ckpt
from hdkd.export import ExportCheckError, export_model
from hdkd.models import create_model

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

IMG = 32


def _trained_like(name: str, seed: int = 0) -> torch.nn.Module:
    """A model whose BatchNorms have non-trivial running statistics, as after training."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=3, img_size=IMG)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _images(n: int) -> torch.Tensor:
    return torch.randn(n, 3, IMG, IMG, generator=torch.Generator().manual_seed(n))


def _onnx_ops(path) -> set[str]:
    return {f"{n.domain}::{n.op_type}" if n.domain else n.op_type
            for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("name", ["hdkd_student", "hdkd_teacher"])
def test_onnx_export_runs_in_onnxruntime_at_any_batch(name, tmp_path):
    model = _trained_like(name)
    report = export_model(model, tmp_path / "m.onnx", "onnx")
    assert report.batch is None and report.checked_batches == (1, 3)
    assert report.max_abs_diff <= 1e-4
    assert not any(op.startswith(("hdkd", "com.microsoft")) for op in _onnx_ops(report.path))
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    x = _images(5)
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file left


def test_plain_torch_onnx_export_of_the_default_model(tmp_path):
    """What a new user tries first (it failed while the fused ops reached the exporter)."""
    model = _trained_like("hdkd")
    x = _images(2)
    torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), dynamo=True, verbose=False)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=0, atol=1e-4)


def test_pt2_program_loads_and_runs_without_hdkd(tmp_path):
    model = _trained_like("hdkd", seed=1)
    report = export_model(model, tmp_path / "m.pt2", "pt2")
    assert report.max_abs_diff <= 1e-4
    x = _images(4)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(x), tmp_path / "expected.pt")
    # hdkd cannot be imported in the child: the program must hold standard operators only
    code = ("import sys; sys.modules['hdkd'] = None\n"
            "import torch\n"
            f"d = {str(tmp_path)!r}\n"
            "program = torch.export.load(d + '/m.pt2').module()\n"
            "x, expected = torch.load(d + '/x.pt'), torch.load(d + '/expected.pt')\n"
            "print((program(x) - expected).abs().max().item())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip().splitlines()[-1]) <= 1e-4


def test_static_batch_and_a_failed_check_writes_nothing(tmp_path):
    model = _trained_like("hdkd_student", seed=2)
    with pytest.raises(ExportCheckError, match="differs from the model"):
        export_model(model, tmp_path / "m.pt2", "pt2", batch=2, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []
    report = export_model(model, tmp_path / "m.pt2", "pt2", batch=2)
    assert report.batch == 2 and report.checked_batches == (2,)


def test_bad_arguments_are_named(tmp_path):
    model = create_model("hdkd", num_classes=3, img_size=IMG)
    with pytest.raises(ValueError, match="format must be one of onnx, pt2"):
        export_model(model, tmp_path / "m", "tflite")
    with pytest.raises(ValueError, match="batch must be a positive int"):
        export_model(model, tmp_path / "m.onnx", "onnx", batch=0)
    with pytest.raises(TypeError, match="expects an hdkd model"):
        export_model(torch.nn.Linear(2, 2), tmp_path / "m.onnx", "onnx")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        export_model(model, tmp_path, "onnx")


def test_export_command(tmp_path, capsys):
    model = _trained_like("hdkd", seed=3)
    path = tmp_path / "best.pt"
    ckpt.save_atomic(ckpt.make_model_checkpoint("hdkd", model, ["a", "b", "c"], temperature=2.0),
                     path)
    assert main(["export", str(path), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert f"-> {tmp_path / 'best.onnx'} (onnx, batch dynamic)" in out
    assert "divided by the calibration temperature 2" in out
    assert "check: max abs difference from PyTorch" in out
    session = ort.InferenceSession(str(tmp_path / "best.onnx"), providers=["CPUExecutionProvider"])
    x = _images(3)
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0],
                                   model(x).numpy() / 2.0, rtol=0, atol=1e-4)
    assert main(["export", str(tmp_path / "missing.pt"), "--format", "pt2"]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert main(["export", "hdkd_student", "--format", "pt2"]) == 2
    assert "'hdkd_student' is a model name, not a trained model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(path), "--format", "onnx", "--batch", "0"])
    assert "expected 'dynamic' or a positive batch size" in capsys.readouterr().err
