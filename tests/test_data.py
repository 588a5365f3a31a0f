"""hdkd.data on the digits demo data, tiny generated image folders and .npz files."""
from __future__ import annotations

import json
import math
import os
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hdkd.data import (IMAGENET_MEAN, IMAGENET_STD, ImageReadError, TrainAugment,
                       class_balanced_sampler, load_dataset, read_smote_targets, smote_oversample,
                       stratified_split)
from hdkd.data.smote_targets import resolve_smote_targets
from hdkd.data.splits import named_classes
from hdkd.data import augment as A

PIL = pytest.importorskip("PIL.Image")


def _normalised(rgb):
    """What a constant image of colour rgb (0..255) becomes after ToTensor + Normalize."""
    return torch.tensor([(v / 255 - m) / s for v, m, s in zip(rgb, IMAGENET_MEAN, IMAGENET_STD)])


def _write(path, mode, color, size=(20, 12)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.new(mode, size, color=color).save(path)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", 16, seed=0)


def test_digits_splits_are_stratified_and_normalised(digits):
    assert digits.classes == [str(i) for i in range(10)]
    sizes = len(digits.train), len(digits.val), len(digits.test)
    assert sum(sizes) == 1797
    assert sizes[1] == pytest.approx(0.1 * 1797, abs=10) and sizes[2] == pytest.approx(0.2 * 1797,
                                                                                       abs=10)
    for split in (digits.val, digits.test):
        assert len(Counter(split.labels)) == 10  # every class in every split
    assert digits.train_labels == digits.train.labels
    x, y = digits.val[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)
    pixels = x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5) and torch.allclose(pixels[0], pixels[2],
                                                                              atol=1e-5)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5 and pixels.max() > 0.5


def test_digits_match_sklearn_upsampled():
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images).float()[:, None] / 16
    splits = load_dataset("digits", 32, seed=3, augment=False)
    want = F.interpolate(raw, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    # find one validation image among the upsampled originals (8-bit storage: 1/255 error)
    x, y = splits.val[5]
    gray = x[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    err = (want[:, 0] - gray).abs().flatten(1).max(dim=1).values
    assert float(err.min()) <= 0.5 / 255 + 1e-5
    assert int(load_digits().target[int(err.argmin())]) == y


def test_seed_fixes_the_split_and_the_augmentation(digits):
    again = load_dataset("digits", 16, seed=0)
    other = load_dataset("digits", 16, seed=1)
    assert again.test.labels == digits.test.labels
    assert torch.equal(again.test[3][0], digits.test[3][0])
    assert not torch.equal(torch.stack([other.test[i][0] for i in range(20)]),
                           torch.stack([digits.test[i][0] for i in range(20)]))
    torch.manual_seed(7)
    first = [digits.train[i][0] for i in range(4)]
    torch.manual_seed(7)
    second = [again.train[i][0] for i in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(digits.train[0][0], digits.train[0][0])  # augmented: random per call
    plain = load_dataset("digits", 16, seed=0, augment=False)
    assert torch.equal(plain.train[0][0], plain.train[0][0])
    assert torch.equal(plain.val[0][0], digits.val[0][0])  # never augmented


def test_stratified_split_is_exact_per_class():
    labels = [0] * 50 + [1] * 20 + [2] * 3
    train, val, test = stratified_split(labels, 0.1, 0.2, seed=0)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(73))
    got = [Counter(np.asarray(labels)[idx].tolist()) for idx in (train, val, test)]
    assert got[1] == {0: 5, 1: 2} and got[2] == {0: 10, 1: 4, 2: 1} and got[0][2] == 2


@pytest.fixture
def train_test_folder(tmp_path):
    root = tmp_path / "data"
    for split, count in (("train", 10), ("test", 3)):
        for cls, rgb in (("zeta", (10, 200, 30)), ("alpha", (250, 0, 120))):
            for i in range(count):
                if i % 2:  # grayscale files in the same folder
                    _write(str(root / split / cls / f"{i}.png"), "L", 90)
                else:
                    _write(str(root / split / cls / f"{i}.png"), "RGB", rgb)
    (root / "train" / "alpha" / "notes.txt").write_text("not an image")
    return root


def test_image_folders_train_test_with_val_cut_from_train(train_test_folder):
    splits = load_dataset(str(train_test_folder), 16, seed=0, augment=False)
    assert splits.classes == ["alpha", "zeta"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 2, 6)
    assert Counter(splits.val.labels) == {0: 1, 1: 1}
    items = [splits.test[i] for i in range(len(splits.test))]
    colours = {(0, 0): (250, 0, 120), (1, 0): (10, 200, 30)}
    for (x, y), path in zip(items, splits.test.paths):
        assert x.shape == (3, 16, 16)
        name = int(os.path.basename(path)[0])
        rgb = (90, 90, 90) if name % 2 else colours[(y, 0)]
        assert torch.allclose(x, _normalised(rgb).view(3, 1, 1).expand(3, 16, 16), atol=1e-5), path


def test_image_folders_with_val_folder_and_single_folder_split(tmp_path):
    for split in ("train", "val", "test"):
        for cls in ("a", "b"):
            for i in range(2):
                _write(str(tmp_path / "tvt" / split / cls / f"{i}.jpg"), "RGB", (1, 2, 3))
    splits = load_dataset(str(tmp_path / "tvt"), 8)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4, 4, 4)

    for cls, count in (("x", 20), ("y", 10)):
        for i in range(count):
            _write(str(tmp_path / "flat" / cls / f"{i}.png"), "L", i * 10)
    one = load_dataset(str(tmp_path / "flat"), 8, seed=4)
    assert (len(one.train), len(one.val), len(one.test)) == (21, 3, 6)
    assert Counter(one.test.labels) == {0: 4, 1: 2}
    assert load_dataset(str(tmp_path / "flat"), 8, seed=4).test.paths == one.test.paths
    assert load_dataset(str(tmp_path / "flat"), 8, seed=5).test.paths != one.test.paths


def test_sixteen_bit_grayscale(tmp_path):
    for cls in ("a", "b"):
        for i in range(5):
            path = tmp_path / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            PIL.fromarray(np.full((6, 6), 65535 // 2, dtype=np.uint16)).save(str(path))
    x, _ = load_dataset(str(tmp_path), 8, augment=False).test[0]
    assert torch.allclose(x, _normalised((127.5,) * 3).view(3, 1, 1).expand(3, 8, 8), atol=1e-4)


def test_corrupt_images_are_reported_by_path(train_test_folder):
    bad = train_test_folder / "train" / "zeta" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not image data")
    with pytest.raises(ImageReadError, match=str(bad)):
        load_dataset(str(train_test_folder), 16)
    bad.unlink()
    # a truncated file passes the header check at load time and fails, by path, when read
    good = train_test_folder / "test" / "zeta" / "0.png"
    _write(str(good), "RGB", (1, 2, 3), size=(64, 64))
    good.write_bytes(good.read_bytes()[:60])
    splits = load_dataset(str(train_test_folder), 16)
    index = splits.test.paths.index(str(good))
    with pytest.raises(ImageReadError, match=str(good)):
        splits.test[index]


def test_folder_errors(tmp_path):
    (tmp_path / "only" / "train" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no test/"):
        load_dataset(str(tmp_path / "only"), 8)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        load_dataset(str(tmp_path / "empty"), 8)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset(str(tmp_path / "nowhere"), 8)
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", 8, val_fraction=1.5)


def _npz(path, rgb=False, val=True, n=40):
    rng = np.random.default_rng(0)
    shape = (28, 28, 3) if rgb else (28, 28)
    arrays = {}
    for split, count in (("train", n), ("val", 8), ("test", 10)):
        if split == "val" and not val:
            continue
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 3)[:, None]
    np.savez(path, **arrays)
    return arrays


def test_medmnist_npz(tmp_path):
    arrays = _npz(tmp_path / "gray.npz")
    splits = load_dataset(str(tmp_path / "gray.npz"), 28, augment=False)
    assert splits.classes == ["0", "1", "2"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 8, 10)
    x, y = splits.test[4]
    assert y == 1 and x.shape == (3, 28, 28)
    want = torch.from_numpy(arrays["test_images"][4]).float() / 255
    assert torch.allclose(x[0], (want - IMAGENET_MEAN[0]) / IMAGENET_STD[0], atol=1e-5)

    rgb = _npz(tmp_path / "rgb.npz", rgb=True, val=False)
    splits = load_dataset(str(tmp_path / "rgb.npz"), 32, augment=False)
    assert (len(splits.train), len(splits.val)) == (36, 4)
    x, _ = splits.test[0]
    want = F.interpolate(torch.from_numpy(rgb["test_images"][:1]).permute(0, 3, 1, 2).float() / 255,
                         size=(32, 32), mode="bilinear", antialias=True, align_corners=False)[0]
    pixels = x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert float((pixels - want).abs().max()) <= 0.5 / 255 + 1e-5


def test_npz_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros(2, int))
    with pytest.raises(ValueError, match="bad.npz lacks.*test_images"):
        load_dataset(str(path), 8)
    np.savez(path, train_images=np.zeros((2, 4, 4), np.uint8), train_labels=np.zeros((2, 3), int),
             test_images=np.zeros((2, 4, 4), np.uint8), test_labels=np.zeros(2, int))
    with pytest.raises(ValueError, match="bad.npz.*train_labels.*multi-label"):
        load_dataset(str(path), 8)


def test_smote_balances_with_points_between_same_class_neighbours():
    rng = np.random.default_rng(1)
    images = np.concatenate([rng.integers(0, 60, (30, 2, 2)), rng.integers(200, 256, (6, 2, 2))])
    images = images.astype(np.uint8)
    labels = [0] * 30 + [1] * 6
    out, out_labels = smote_oversample(images, labels, seed=0)
    assert Counter(out_labels) == {0: 30, 1: 30}
    assert np.array_equal(out[:36], images) and out.dtype == np.uint8
    synthetic = out[36:].reshape(24, -1).astype(float)
    minority = images[30:].reshape(6, -1).astype(float)
    assert (synthetic >= minority.min(0) - 0.5).all() and (synthetic <= minority.max(0) + 0.5).all()
    again, _ = smote_oversample(images, labels, seed=0)
    assert np.array_equal(again, out)
    # each synthetic point lies on a segment between two minority samples
    for point in synthetic:
        on_segment = False
        for i in range(6):
            for j in range(6):
                d = minority[j] - minority[i]
                if i != j and d @ d > 0:
                    u = float((point - minority[i]) @ d / (d @ d))
                    on_segment |= (0 <= u <= 1 and
                                   np.abs(minority[i] + u * d - point).max() <= 1.0)
        assert on_segment


def test_smote_in_load_dataset(tmp_path):
    for cls, count in (("big", 12), ("small", 3)):
        for i in range(count):
            _write(str(tmp_path / "train" / cls / f"{i}.png"), "RGB", (i * 20, 50, 9))
        _write(str(tmp_path / "test" / cls / "0.png"), "RGB", (0, 0, 0))
    splits = load_dataset(str(tmp_path), 8, smote=True, val_fraction=0.2)
    assert Counter(splits.train_labels) == {0: 10, 1: 10}
    assert len(splits.train) == 20 and splits.train[19][0].shape == (3, 8, 8)
    assert len(splits.val) == 3  # validation data is never oversampled


def test_smote_to_per_class_targets_from_a_file(tmp_path):
    for cls, count in (("big", 12), ("mid", 5), ("small", 3)):
        for i in range(count):
            _write(str(tmp_path / "train" / cls / f"{i}.png"), "RGB", (i * 20, 50, 9))
        for split in ("val", "test"):
            _write(str(tmp_path / split / cls / "0.png"), "RGB", (0, 0, 0))
    targets_file = tmp_path / "targets.json"
    targets_file.write_text(json.dumps({"small": 7, "mid": 5}))
    splits = load_dataset(str(tmp_path), 8, smote_targets=read_smote_targets(str(targets_file)))
    # the named classes reach their targets; "big" keeps its count
    assert Counter(splits.classes[y] for y in splits.train_labels) == {"big": 12, "mid": 5,
                                                                       "small": 7}
    assert len(splits.train) == 24 and len(splits.val) == 3


@pytest.mark.parametrize("content,message", [
    ("{not json", "targets.json' is not valid JSON"),
    ("[1, 2]", "must hold a non-empty JSON object"),
    ('{"small": -1, "big": 2.5, "mid": 3}', "not one for: 'small' \\(-1\\), 'big' \\(2.5\\)"),
])
def test_smote_targets_file_errors_name_the_file_and_entries(tmp_path, content, message):
    path = tmp_path / "targets.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_smote_targets(str(path))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_smote_targets(str(tmp_path / "missing.json"))


def test_smote_targets_checked_against_the_classes_and_counts():
    classes, labels = ["akiec", "nv"], [0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="does not have: 'mel', 'vasc' \\(its classes: 'akiec'"):
        resolve_smote_targets({"mel": 3, "vasc": 2, "nv": 3}, classes, labels)
    with pytest.raises(ValueError, match="below the training split's count: 'nv' \\(target 2, 3"):
        resolve_smote_targets({"nv": 2}, classes, labels)
    with pytest.raises(ValueError, match="no training image to oversample for 'akiec'"):
        resolve_smote_targets({"akiec": 4}, classes, [1, 1])
    assert resolve_smote_targets({"akiec": 5}, classes, labels) == {0: 5}
    images = np.arange(5 * 4, dtype=np.uint8).reshape(5, 2, 2)
    _, out = smote_oversample(images, labels, seed=0, targets={0: 5})
    assert Counter(out) == {0: 5, 1: 3}


def test_class_balanced_sampler():
    labels = [0] * 900 + [1] * 100
    draws = list(class_balanced_sampler(labels, seed=3))
    assert draws == list(class_balanced_sampler(labels, seed=3))
    assert draws != list(class_balanced_sampler(labels, seed=4))
    share = sum(labels[i] for i in draws) / len(draws)
    assert len(draws) == 1000 and abs(share - 0.5) < 0.06


def test_augment_ops():
    x = torch.rand(3, 9, 9)
    r90 = A.rotate(x, 90.0)
    assert any(torch.allclose(r90, torch.rot90(x, k, dims=(1, 2)), atol=1e-5) for k in (1, -1))
    assert torch.allclose(A.rotate(x, 180.0), x.flip(1).flip(2), atol=1e-5)
    # nearest interpolation: every pixel is an input pixel or the black fill, never a blend
    r30 = A.rotate(x, 30.0)
    assert torch.isin(r30, torch.cat([x.flatten(), torch.zeros(1)])).all()
    assert (r30 == 0).any() and (r30 != 0).sum() > 0.6 * r30.numel()
    assert torch.allclose(A.adjust_brightness(x, 1.2), (x * 1.2).clamp(0, 1))
    gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).mean()
    assert torch.allclose(A.adjust_contrast(x, 0.7), (0.7 * x + 0.3 * gray).clamp(0, 1))
    kernel = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
    smooth = x.clone()
    smooth[:, 1:-1, 1:-1] = F.conv2d(x[:, None], kernel[None, None])[:, 0]
    assert torch.allclose(A.adjust_sharpness(x, 2.0), (2 * x - smooth).clamp(0, 1), atol=1e-6)
    sigma = 0.8
    k1 = torch.tensor([math.exp(-1 / (2 * sigma ** 2)), 1.0, math.exp(-1 / (2 * sigma ** 2))])
    k1 = k1 / k1.sum()
    want = F.conv2d(F.pad(x[:, None], (1, 1, 1, 1), mode="reflect"), torch.outer(k1, k1)[None, None])
    assert torch.allclose(A.gaussian_blur(x, 3, sigma), want[:, 0], atol=1e-6)


def test_train_augment_keeps_range_shape_and_varies():
    aug = TrainAugment()
    x = torch.rand(1, 16, 16)
    torch.manual_seed(0)
    outs = [aug(x) for _ in range(6)]
    assert all(o.shape == x.shape and o.min() >= 0 and o.max() <= 1 for o in outs)
    assert len({o.sum().item() for o in outs}) == 6
    torch.manual_seed(0)
    assert all(torch.equal(o, aug(x)) for o in outs)


def test_medmnist_archives_named_after_their_dataset_get_its_class_names(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in (("train", 12), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 2)[:, None]
    for name in ("breastmnist_64.npz", "unknown.npz"):
        np.savez(tmp_path / name, **arrays)
    named = load_dataset(str(tmp_path / "breastmnist_64.npz"), 28, augment=False)
    assert named.classes == ["malignant", "normal, benign"]
    assert load_dataset(str(tmp_path / "unknown.npz"), 28, augment=False).classes == ["0", "1"]
    # a dermamnist-named file with 3 classes is not DermaMNIST: no names are guessed
    _npz(tmp_path / "dermamnist.npz")
    assert load_dataset(str(tmp_path / "dermamnist.npz"), 28, augment=False).classes == [
        "0", "1", "2"]


def test_named_classes():
    assert named_classes(["a", "b"], None) == ["a", "b"]
    assert named_classes(["0", "1"], [" benign", "malignant "]) == ["benign", "malignant"]
    for bad in (["x"], ["x", "x"], ["x", ""]):
        with pytest.raises(ValueError, match="expected 2 distinct non-empty names"):
            named_classes(["0", "1"], bad)
