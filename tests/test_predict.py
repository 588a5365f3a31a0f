"""`hdkd predict` and hdkd.predict: files and folders in, one row per image out, with the
probabilities the model gives; unreadable files listed, the others still predicted."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from hdkd.cli import main
from hdkd.data.folders import read_image
from hdkd.data.transforms import finish
from hdkd.distill import checkpoint as ckpt
from hdkd.models import create_model
from hdkd.predict import find_images

IMG = 32
CLASSES = ["benign", "malignant", "other"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("hdkd_student", num_classes=3, img_size=IMG).eval()


def _checkpoint(tmp_path, model, **extra):
    path = tmp_path / "best.pt"
    ckpt.save_atomic(ckpt.make_model_checkpoint("hdkd_student", model, CLASSES, **extra), path)
    return path


def _images(root, n=5):
    """n PNGs in root and root/sub (sizes and modes vary), and one corrupt .png."""
    g = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    paths = []
    for i in range(n):
        folder = root if i % 2 else root / "sub"
        size = (40 + 3 * i, 37)
        mode = "L" if i == 2 else "RGB"
        shape = size[::-1] + (() if mode == "L" else (3,))
        p = folder / f"im{i}.png"
        Image.fromarray(g.integers(0, 256, shape, dtype=np.uint8), mode).save(p)
        paths.append(str(p))
    (root / "broken.png").write_bytes(b"not a png")
    (root / "notes.txt").write_text("ignored: not an image extension")
    return sorted(paths)


def _expected(model, path, temperature=1.0, tta=False):
    x = finish(read_image(path), IMG)[None]
    views = [x, x.flip(-1), x.flip(-2), x.flip(-2, -1)] if tta else [x]
    with torch.no_grad():
        return torch.stack([torch.softmax(model(v) / temperature, 1)[0] for v in views]).mean(0)


def test_folder_to_csv_with_an_unreadable_file(tmp_path, model, capsys):
    paths = _images(tmp_path / "in")
    ck = _checkpoint(tmp_path, model)
    out = tmp_path / "preds.csv"
    code = main(["predict", str(ck), str(tmp_path / "in"), "--out", str(out), "--batch-size", "2"])
    assert code == 1  # something failed
    err = capsys.readouterr().err
    assert "1 of 6 files could not be read" in err and "broken.png" in err
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["path"] for r in rows) == paths
    assert list(rows[0]) == ["path", "predicted", "probability", "p_benign", "p_malignant",
                             "p_other"]
    for r in rows:
        probs = torch.tensor([float(r[f"p_{c}"]) for c in CLASSES])
        expected = _expected(model, r["path"])
        assert torch.allclose(probs, expected, atol=2e-6)
        assert r["predicted"] == CLASSES[int(expected.argmax())]
        assert float(r["probability"]) == pytest.approx(float(expected.max()), abs=2e-6)


def test_json_top_k_tta_and_temperature(tmp_path, model, capsys):
    paths = _images(tmp_path / "in", n=3)
    (tmp_path / "in" / "broken.png").unlink()
    ck = _checkpoint(tmp_path, model, temperature=2.5)
    out = tmp_path / "preds.json"
    assert main(["predict", str(ck), paths[0], str(tmp_path / "in" / "sub"), "--out", str(out),
                 "--top-k", "2", "--tta"]) == 0
    rows = json.loads(out.read_text())
    assert [r["path"] for r in rows] == [paths[0]] + [p for p in paths if "/sub/" in p]
    for r in rows:
        expected = _expected(model, r["path"], temperature=2.5, tta=True)
        top = expected.topk(2)
        assert [t["class"] for t in r["top_k"]] == [CLASSES[i] for i in top.indices]
        assert [t["probability"] for t in r["top_k"]] == pytest.approx(top.values.tolist(),
                                                                       abs=2e-6)


def test_stdout_and_class_names(tmp_path, model, capsys):
    paths = _images(tmp_path / "in", n=2)
    sd = tmp_path / "plain.pt"
    torch.save(model.state_dict(), sd)
    plain = ["--model", "hdkd_student", "--num-classes", "3", "--img-size", str(IMG)]
    assert main(["predict", str(sd), paths[0], *plain, "--classes", "a,b,c"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1 and rows[0]["predicted"] in ("a", "b", "c")
    assert main(["predict", str(sd), paths[0], *plain]) == 0
    captured = capsys.readouterr()
    assert "stores no class names" in captured.err and "p_class_2" in captured.out


@pytest.mark.parametrize("args,message", [
    (["{ck}", "{tmp}/missing"], "input '{tmp}/missing' does not exist"),
    (["{ck}", "{tmp}/empty"], "no images"),
    (["{tmp}/nothing.pt", "{tmp}/in"], "nothing.pt"),
    (["{tmp}/in/sub/im0.png", "{tmp}/in"], "im0.png' is not"),  # an image as the checkpoint
    (["{ck}", "{tmp}/in", "--out", "{tmp}/p.xlsx"], "must end in .csv or .json"),
    (["{ck}", "{tmp}/in", "--top-k", "4"], "--top-k 4: must be between 1 and 3"),
    (["{ck}", "{tmp}/in", "--classes", "a,b"], "expected 3 distinct non-empty names"),
    (["{ck}", "{tmp}/in", "--batch-size", "0"], "batch_size must be at least 1"),
])
def test_bad_inputs_get_one_line_naming_them(tmp_path, model, capsys, args, message):
    _images(tmp_path / "in", n=1)
    (tmp_path / "empty").mkdir()
    ck = _checkpoint(tmp_path, model)
    fill = {"ck": str(ck), "tmp": str(tmp_path)}
    assert main(["predict", *(a.format(**fill) for a in args)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(**fill) in err[0]
    assert not (tmp_path / "p.xlsx").exists()


def test_find_images_order_and_hidden_entries(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    for p in ("b/2.png", "1.JPG", ".hidden/3.png", ".4.png", "5.txt"):
        (tmp_path / p).write_bytes(b"")
    assert find_images([str(tmp_path)]) == [str(tmp_path / "1.JPG"), str(tmp_path / "b/2.png")]
