"""Cross-validation folds, patient-grouped splits (no group crosses splits), the groups file's
errors and `hdkd cv`'s mean +- std report."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hdkd.cli import main
from hdkd.commands.cv import collect_folds, summarise
from hdkd.data import load_dataset
from hdkd.data.folds import fold_split, group_split
from hdkd.data.groups import read_groups


def _study(n_groups=40, seed=0):
    """Patients with 1-5 images each, all of one class (a lesion's photos)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, n_groups)
    groups = np.repeat([f"p{g}" for g in range(n_groups)], sizes).astype(object)
    labels = np.repeat(rng.integers(0, 3, n_groups), sizes)
    return labels, groups


def _groups_of(groups, idx):
    return set(groups[idx])


def test_no_group_crosses_splits_in_any_fold_and_every_image_is_tested_once():
    labels, groups = _study()
    tested = []
    for fold in range(5):
        train, val, test = fold_split(labels, 5, fold, 0.1, seed=0, groups=groups)
        assert len(train) + len(val) + len(test) == len(labels)
        assert not _groups_of(groups, train) & _groups_of(groups, test)
        assert not _groups_of(groups, train) & _groups_of(groups, val)
        assert not _groups_of(groups, val) & _groups_of(groups, test)
        assert len(val) > 0 and len(test) > 0
        tested += test.tolist()
    assert sorted(tested) == list(range(len(labels)))
    train, val, test = group_split(labels, groups, 0.1, 0.2, seed=0)
    assert not (_groups_of(groups, train) & _groups_of(groups, test)
                or _groups_of(groups, train) & _groups_of(groups, val)
                or _groups_of(groups, val) & _groups_of(groups, test))
    assert 0.1 < len(test) / len(labels) < 0.3


def test_plain_folds_are_stratified_and_deterministic():
    labels = np.array([0] * 50 + [1] * 25 + [2] * 25)
    a = fold_split(labels, 5, 2, 0.1, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, fold_split(labels, 5, 2, 0.1, seed=7)))
    assert np.bincount(labels[a[2]]).tolist() == [10, 5, 5]
    with pytest.raises(ValueError, match="--fold: expected an integer in 0..4"):
        fold_split(labels, 5, 5, 0.1, seed=0)


def _folder(root, per_class=8):
    rng = np.random.default_rng(0)
    for c, name in enumerate(("benign", "malignant")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.normal(70 + 90 * c, 30, (8, 8, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _write_groups(path, rows):
    path.write_text("image,group\n" + "".join(f"{k},{g}\n" for k, g in rows))
    return str(path)


def test_groups_file_for_an_image_folder(tmp_path):
    data = _folder(tmp_path / "data")
    rows = [(f"{c}/{i}.png", f"{c}-patient{i // 2}") for c in ("benign", "malignant")
            for i in range(8)]
    groups = _write_groups(tmp_path / "groups.csv", rows)
    splits = load_dataset(str(data), 8, folds=4, fold=1, groups=groups, val_fraction=0.25)
    patient = dict(rows)

    def patients(ds):
        return {patient[Path(p).relative_to(data).as_posix()] for p in ds.paths}

    assert not patients(splits.train) & patients(splits.test)
    assert not patients(splits.val) & (patients(splits.train) | patients(splits.test))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 16


def test_groups_file_errors_list_the_images(tmp_path):
    keys = [f"benign/{i}.png" for i in range(12)]
    path = _write_groups(tmp_path / "g.csv", [(k, "a") for k in keys[:-2]] +
                         [("benign/x.png", "b"), ("nope/y.png", "c")])
    with pytest.raises(ValueError) as err:
        read_groups(path, keys)
    message = str(err.value)
    assert "does not cover 2 image(s) of the data: 'benign/10.png', 'benign/11.png'" in message
    assert "names 2 image(s) the data does not have: 'benign/x.png', 'nope/y.png'" in message
    (tmp_path / "h.csv").write_text("file,patient\nbenign/0.png,a\n")
    with pytest.raises(ValueError, match="header line 'image,group'"):
        read_groups(str(tmp_path / "h.csv"), keys)
    with pytest.raises(ValueError, match="more than once: 'benign/0.png'"):
        read_groups(_write_groups(tmp_path / "d.csv", [(keys[0], "a"), (keys[0], "b")]), keys)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_groups(str(tmp_path / "missing.csv"), keys)
    with pytest.raises(ValueError, match="comes with its own train/test split"):
        (tmp_path / "own" / "train" / "a").mkdir(parents=True)
        (tmp_path / "own" / "test").mkdir()
        load_dataset(str(tmp_path / "own"), 8, folds=5, fold=0)


def _fake_fold(run, fold, accuracy, folds=3, seed=0, auroc=0.9):
    run.mkdir(parents=True)
    report = {"split": "test", "accuracy": accuracy, "balanced_accuracy": accuracy - 0.05,
              "macro_f1": accuracy - 0.1, "auroc_ovr": auroc, "ece": 0.05, "brier": 0.3,
              "nll": 0.6, "split_settings": {"data": "d", "seed": seed, "val_fraction": 0.1,
                                             "test_fraction": 0.2, "folds": folds,
                                             "fold": fold, "groups": "g.csv"}}
    (run / "test_metrics.json").write_text(json.dumps(report))
    return str(run)


def test_cv_aggregates_mean_and_std_and_checks_the_folds(tmp_path, capsys):
    runs = [_fake_fold(tmp_path / f"fold{i}", i, acc, auroc=None if i == 1 else 0.9)
            for i, acc in enumerate((0.8, 0.7, 0.9))]
    folds, total = collect_folds(runs)
    summary = summarise(folds)
    assert total == 3 and summary["accuracy"]["mean"] == pytest.approx(0.8)
    assert summary["accuracy"]["std"] == pytest.approx(np.std([0.8, 0.7, 0.9], ddof=1))
    assert summary["auroc_ovr"] == {"mean": pytest.approx(0.9), "std": 0.0, "folds": 2}
    assert main(["cv", *runs]) == 0
    printed = capsys.readouterr().out
    assert "accuracy            0.8000 +- 0.1000" in printed
    report = json.loads((tmp_path / "cv_report.json").read_text())
    assert report["folds_total"] == 3 and [f["fold"] for f in report["folds"]] == [0, 1, 2]

    other_seed = _fake_fold(tmp_path / "other", 1, 0.5, seed=1)
    assert main(["cv", runs[0], other_seed]) == 2
    assert "their seed differs" in capsys.readouterr().err
    assert main(["cv", runs[0], runs[0]]) == 2
    assert "fold(s) [0] given more than once" in capsys.readouterr().err
    assert main(["cv", runs[0], str(tmp_path / "empty")]) == 2
    assert "no test_metrics.json" in capsys.readouterr().err
    assert main(["cv", runs[0], runs[2]]) == 0
    assert "missing fold(s) [1]" in capsys.readouterr().out


def test_train_fold_records_its_split_settings(tmp_path):
    data = _folder(tmp_path / "data", per_class=6)
    rows = [(f"{c}/{i}.png", f"{c}{i // 2}") for c in ("benign", "malignant") for i in range(6)]
    groups = _write_groups(tmp_path / "groups.csv", rows)
    assert main(["train", "--model", "hdkd_teacher", "--data", str(data), "--out",
                 str(tmp_path / "fold1"), "--img-size", "16", "--batch-size", "2", "--epochs",
                 "1", "--folds", "3", "--fold", "1", "--groups", groups, "--no-augment",
                 "--no-progress", "--no-plots"]) == 0
    report = json.loads((tmp_path / "fold1" / "test_metrics.json").read_text())
    assert report["split_settings"]["folds"] == 3 and report["split_settings"]["fold"] == 1
    assert report["num_samples"] == 4  # 2 of the 6 patients, 2 images each
    # eval finds the same test fold from the run's settings
    assert main(["eval", str(tmp_path / "fold1" / "best.pt"), "--data", str(data),
                 "--bootstrap", "0", "--no-plots"]) == 0
    evaluated = json.loads((tmp_path / "fold1" / "eval_test.json").read_text())
    assert evaluated["images"] == 4 and evaluated["accuracy"] == report["accuracy"]
    assert main(["train", "--model", "hdkd_teacher", "--data", str(data), "--out",
                 str(tmp_path / "bad"), "--folds", "3"]) == 2
