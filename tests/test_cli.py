"""`hdkd train / eval / convert / demo` end to end on tiny data, and their --help."""
from __future__ import annotations

import argparse
import json
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hdkd.cli import build_parser, main
from hdkd.distill import checkpoint as ckpt
from hdkd.models import create_model, to_original_state_dict


def image_folder(root, per_class=10, size=20, seed=0):
    """root/<class>/<i>.png, each class a different mean colour plus noise."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("benign", "malignant", "normal")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.normal(60 + 60 * c, 30, (size, size, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


@pytest.mark.parametrize("command", ["train", "eval", "demo", "convert"])
def test_help_explains_every_flag_with_its_default(command):
    for action in _subparser(command)._actions:
        if not action.option_strings or action.dest == "help" or action.required:
            continue
        assert action.help and "default" in action.help, f"{command} {action.option_strings}"


def test_train_eval_convert_end_to_end(tmp_path, capsys):
    data = str(image_folder(tmp_path / "data"))
    common = ["--data", data, "--img-size", "16", "--batch-size", "4", "--epochs", "1",
              "--no-augment", "--no-progress", "--no-plots"]
    assert main(["train", "--model", "hdkd_teacher", "--out", str(tmp_path / "t"), *common]) == 0
    assert main(["train", "--model", "hdkd", "--teacher", str(tmp_path / "t" / "best.pt"),
                 "--out", str(tmp_path / "h"), "--lr", "1e-3", *common]) == 0
    log = [json.loads(x) for x in (tmp_path / "h" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and {"train_loss", "val_loss", "val_accuracy", "lr"} <= set(log[0])

    capsys.readouterr()
    out_json = tmp_path / "eval.json"
    assert main(["eval", str(tmp_path / "h" / "best.pt"), "--data", data,
                 "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    assert result["model"] == "hdkd" and result["split"] == "test"
    # the same test split as training used: its metrics match the trainer's own
    trained = json.loads((tmp_path / "h" / "test_metrics.json").read_text())
    assert result["images"] == sum(map(sum, trained["confusion_matrix"]))
    assert result["accuracy"] == pytest.approx(trained["accuracy"])
    assert "malignant" in printed

    # hdkd -> original -> hdkd: identical tensors, and the original file has original keys
    original = tmp_path / "original.pt"
    back = tmp_path / "back.pt"
    assert main(["convert", str(tmp_path / "h" / "best.pt"), str(original)]) == 0
    assert "DFLT_module.pos_embedding" in torch.load(original, weights_only=True)
    assert main(["convert", str(original), str(back), "--model", "hdkd"]) == 0
    a = ckpt.read_checkpoint(tmp_path / "h" / "best.pt")["model"]
    b = ckpt.read_checkpoint(back)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_convert_refuses_a_mismatched_original_checkpoint(tmp_path, capsys):
    sd = to_original_state_dict(create_model("hdkd_teacher", num_classes=4, img_size=32))
    sd["stage2.0.conv.fn.0.weight"] = torch.zeros(1)
    del sd["fn1.bias"]
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    assert main(["convert", str(bad), str(tmp_path / "out.pt"), "--model", "hdkd_teacher"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"(?s)^hdkd convert: error: .*missing \(1\): fn1\.bias.*wrong shape", err)
    assert "Traceback" not in err
    assert not (tmp_path / "out.pt").exists()
    assert main(["convert", str(bad), str(tmp_path / "out.pt")]) == 2
    assert "say which model it holds" in capsys.readouterr().err


def test_demo_writes_the_table_results_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--img-size", "16", "--teacher-epochs", "1",
                 "--epochs", "1", "--batch-size", "64", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {r["model"]: r for r in results["models"]}
    assert set(rows) == {"hdkd_teacher", "hdkd_student", "hdkd"}
    for r in rows.values():
        assert {"accuracy", "macro_f1", "params", "gflops", "img_per_s"} <= set(r)
        assert 0 <= r["accuracy"] <= 1 and r["gflops"] > 0 and r["img_per_s"] > 0
    assert rows["hdkd_teacher"]["params"] > rows["hdkd"]["params"] > rows["hdkd_student"]["params"]
    report = (out / "report.md").read_text()
    assert "| model | params | GFLOPs |" in report and "hdkd/curves.png" in report
    assert (out / "hdkd" / "confusion_matrix.png").is_file()
    assert "HDKD" in capsys.readouterr().out


def test_demo_gflops_without_fvcore_count_the_fused_ops(monkeypatch):
    """The fallback counter sees hdkd's fused custom ops as zero FLOPs unless it counts the
    reference path: both counts must agree (fvcore also counts norms, hence the 3%)."""
    from hdkd.commands.demo import count_gflops

    model = create_model("hdkd", num_classes=10, img_size=32)
    with_fvcore = count_gflops(model, 32)
    monkeypatch.setitem(sys.modules, "fvcore", None)
    monkeypatch.setitem(sys.modules, "fvcore.nn", None)
    assert count_gflops(model, 32) == pytest.approx(with_fvcore, rel=0.03)


def test_train_refuses_smote_targets_naming_unknown_classes(tmp_path, capsys):
    data = str(image_folder(tmp_path / "data", per_class=4, size=8))
    targets = tmp_path / "targets.json"
    targets.write_text('{"benign": 5, "melanoma": 9}')
    assert main(["train", "--model", "hdkd_teacher", "--data", data, "--out",
                 str(tmp_path / "run"), "--img-size", "16", "--batch-size", "2", "--epochs", "1",
                 "--smote-targets", str(targets), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "does not have: 'melanoma'" in err and "Traceback" not in err
