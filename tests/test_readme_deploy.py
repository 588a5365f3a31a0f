"""The README's Deploy commands, run as written in a fresh folder: train on digits, predict a
folder of PNGs, export to ONNX and pt2 (each checked against PyTorch by the command), heatmaps,
and a shareable folder; then what each step wrote is checked."""
from __future__ import annotations

import csv
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hdkd.cli import main
from hdkd.models import read_pretrained_config

pytest.importorskip("onnxruntime")
pytest.importorskip("pytorch_grad_cam")

README = Path(__file__).resolve().parents[1] / "README.md"


def _deploy_commands() -> list[str]:
    block = re.search(r"<!-- deploy-commands -->\n```\n(.*?)```\n<!-- /deploy-commands -->",
                      README.read_text(), re.S)
    assert block, "README.md has no deploy-commands block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_deploy_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for line in _deploy_commands():
        if line.startswith("hdkd "):
            assert main(shlex.split(line)[1:]) == 0, line
        else:
            done = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=120,
                                  executable="/bin/bash",
                                  env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
            assert done.returncode == 0, f"{line}\n{done.stderr}"
    out = capsys.readouterr().out
    classes = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    rows = list(csv.DictReader(open("predictions.csv")))
    assert len(rows) == 8 and all(r["predicted"] in classes for r in rows)
    assert list(rows[0]) == ["path", "predicted", "probability", "class_1", "p_1", "class_2",
                             "p_2", "class_3", "p_3"]
    assert Path("runs/digits/best.onnx").is_file() and Path("runs/digits/best.pt2").is_file()
    assert out.count("check: max abs difference from PyTorch") == 2
    pngs = sorted(p.name for p in Path("heatmaps").iterdir())
    assert len(pngs) == 16 and {p.split(".")[1] for p in pngs} == {"gradcam", "attention"}
    config = read_pretrained_config("shared")
    assert config["classes"] == classes and config["model"] == "hdkd_student"
    assert json.loads(Path("runs/digits/test_metrics.json").read_text())
