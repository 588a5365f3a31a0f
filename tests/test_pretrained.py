"""save_pretrained / from_pretrained: a config.json + model.safetensors folder that round-trips
every model exactly, is refused when damaged or mismatched, and is read by the commands."""
from __future__ import annotations

import json

import pytest
import torch

from hdkd.cli import main
from hdkd.distill import checkpoint as ckpt
from hdkd.models import create_model, from_pretrained, read_pretrained_config, save_pretrained
from hdkd.models import pretrained

IMG = 32


@pytest.mark.parametrize("name", ["hdkd_teacher", "hdkd_student", "hdkd"])
def test_round_trip_is_exact(tmp_path, name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, img_size=IMG)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
    save_pretrained(model, tmp_path / "shared", classes=["a", "b", "c"], temperature=1.5)
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["config.json",
                                                                       "model.safetensors"]
    loaded = from_pretrained(tmp_path / "shared")
    assert type(loaded) is type(model) and not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    config = read_pretrained_config(tmp_path / "shared")
    assert config["model"] == name and config["classes"] == ["a", "b", "c"]
    assert config["temperature"] == 1.5 and config["img_size"] == IMG
    assert config["mean"] == pytest.approx([0.485, 0.456, 0.406])
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_damaged_or_mismatched_folders_are_refused(tmp_path):
    model = create_model("hdkd_student", num_classes=3, img_size=IMG)
    folder = save_pretrained(model, tmp_path / "m")
    weights = (folder / "model.safetensors").read_bytes()
    config = (folder / "config.json").read_text()

    (folder / "model.safetensors").write_bytes(weights[:-10])
    with pytest.raises(ValueError, match="SHA-256 differs"):
        from_pretrained(folder)
    (folder / "model.safetensors").write_bytes(weights)

    other = create_model("hdkd_student", num_classes=4, img_size=IMG)
    save_pretrained(other, tmp_path / "other")
    (folder / "config.json").write_text(
        (tmp_path / "other" / "config.json").read_text().replace('"num_classes": 4',
                                                                 '"num_classes": 3'))
    with pytest.raises(ValueError, match="SHA-256 differs"):
        from_pretrained(folder)

    edited = json.loads(config)
    edited["weights_sha256"] = json.loads((tmp_path / "other" / "config.json").read_text())[
        "weights_sha256"]
    edited["num_classes"] = 3
    (folder / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors")
                                               .read_bytes())
    (folder / "config.json").write_text(json.dumps(edited))
    with pytest.raises(Exception, match="head.weight"):  # 4-class weights for a 3-class config
        from_pretrained(folder)

    for text, message in [("{", "not valid JSON"), ('{"format": "x"}', "not an hdkd config"),
                          (json.dumps({**json.loads(config), "model": "resnet50"}),
                           "names model 'resnet50'"),
                          (json.dumps({"format": "hdkd-pretrained"}), "lacks model")]:
        (folder / "config.json").write_text(text)
        with pytest.raises(ValueError, match=message):
            from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="2 class names for a model of 3 classes"):
        save_pretrained(model, tmp_path / "x", classes=["a", "b"])
    with pytest.raises(TypeError, match="expected an hdkd model"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")


def test_loading_runs_no_pickled_code(tmp_path, monkeypatch):
    """The weights are read by safetensors alone: torch.load (pickle) is never called."""
    folder = save_pretrained(create_model("hdkd", num_classes=3, img_size=IMG), tmp_path / "m")

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called")
    monkeypatch.setattr(torch, "load", refuse)
    from_pretrained(folder)


def test_hub_repository_ids_pull_through_huggingface_hub(tmp_path, monkeypatch):
    """'user/name' that is not a local folder is pulled with huggingface_hub (here from a local
    folder: nothing is downloaded)."""
    hub = pytest.importorskip("huggingface_hub")
    folder = save_pretrained(create_model("hdkd", num_classes=3, img_size=IMG), tmp_path / "m")
    asked = {}

    def snapshot_download(repo_id, allow_patterns):
        asked.update(repo_id=repo_id, allow_patterns=allow_patterns)
        return str(folder)
    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    monkeypatch.chdir(tmp_path)
    model = from_pretrained("someone/hdkd-ham10000")
    assert asked == {"repo_id": "someone/hdkd-ham10000",
                     "allow_patterns": [pretrained.CONFIG, pretrained.WEIGHTS]}
    assert model.num_classes == 3


def test_convert_writes_and_commands_read_the_folder(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("hdkd_teacher", num_classes=3, img_size=IMG)
    ck = tmp_path / "best.pt"
    ckpt.save_atomic(ckpt.make_model_checkpoint("hdkd_teacher", model, ["x", "y", "z"],
                                                temperature=2.0), ck)
    assert main(["convert", str(ck), str(tmp_path / "shared"), "--to", "pretrained"]) == 0
    config = read_pretrained_config(tmp_path / "shared")
    assert config["classes"] == ["x", "y", "z"] and config["temperature"] == 2.0
    loaded, meta = ckpt.load_model(tmp_path / "shared")
    assert meta["layout"] == "pretrained" and meta["classes"] == ["x", "y", "z"]
    assert meta["temperature"] == 2.0
    # and back to a checkpoint, unchanged
    assert main(["convert", str(tmp_path / "shared"), str(tmp_path / "back.pt")]) == 0
    again, _ = ckpt.load_model(tmp_path / "back.pt")
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="holds a 'hdkd_teacher' model, expected 'hdkd'"):
        ckpt.load_model(tmp_path / "shared", "hdkd")
    with pytest.raises(ValueError, match="has num_classes=3, not 5"):
        ckpt.load_model(tmp_path / "shared", num_classes=5)
