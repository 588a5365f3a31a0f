"""`hdkd explain` and hdkd.explain: heatmaps land where the model looks, on every model and
backend, and the command writes one PNG per image."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from hdkd.cli import main
from hdkd.distill import checkpoint as ckpt
from hdkd.explain import attention_rollout, heatmaps
from hdkd.models import create_model
from hdkd.nn import MBCSA
from hdkd.ops import backends

pytest.importorskip("pytorch_grad_cam")

IMG = 64
MODELS = ["hdkd_teacher", "hdkd_student", "hdkd"]


def _available_backends():
    return [n for n, status in backends().items() if status == "available"]


def _quadrant_model(name, backend, img):
    """A model with the activations of a trained one (BN statistics and affines away from their
    initial values) that sees only the top-left quadrant: its stage-3 map is zero elsewhere."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, img_size=img, backend=backend)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)

    def mask(module, inputs, out):
        m = torch.zeros_like(out)
        m[..., : out.shape[-2] // 2, : out.shape[-1] // 2] = 1
        return out * m
    model.stage3.register_forward_hook(mask)
    return model.eval()


@pytest.mark.parametrize("backend,method", [("torch", "gradcam"), ("torch", "gradcam++"),
                                            ("auto", "gradcam")])
@pytest.mark.parametrize("name", MODELS)
def test_a_model_that_sees_one_quadrant_lights_that_quadrant(name, backend, method, img=IMG):
    """Every class's heatmap lies in the quadrant (an untrained model's heatmap for a class may
    be empty: Grad-CAM keeps only the positive evidence), and each image has a non-empty one."""
    model = _quadrant_model(name, backend, img)
    x = torch.randn(2, 3, img, img, generator=torch.Generator().manual_seed(1))
    classes = [c for c in range(3) for _ in range(2)]
    maps = heatmaps(model, x.repeat(3, 1, 1, 1), method, classes)
    assert maps.shape == (6, img, img)
    # upsampled from the img/8-square stage-3 map: up to one map cell of blur past the edge
    half, cell = img // 2, img // 8
    for m in (m for m in maps if m.max() > 0):
        assert m[:half, :half].sum() / m.sum() > 0.8
        assert m[:half + cell, :half + cell].sum() / m.sum() > 0.999
    for image in range(2):
        assert maps[image::2].max() > 0.5, f"image {image}: no class has a heatmap"


@pytest.mark.parametrize("backend", _available_backends())
def test_eval_mode_gradients_flow_through_the_fused_block(backend):
    """What Grad-CAM needs of every backend, on one block (Triton's interpreter is too slow for
    whole models): in eval mode with autograd on, the fused MBCSA's input and weight gradients
    are the reference's."""
    torch.manual_seed(0)
    block = MBCSA(8, 8, backend=backend).eval()
    reference = copy.deepcopy(block)
    reference.backend = "torch"
    with torch.no_grad():
        for bn in block.batch_norms():
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        reference.load_state_dict(block.state_dict())
    x = torch.randn(2, 8, 7, 5)
    grads = []
    for m in (block, reference):
        xi = x.clone().requires_grad_()
        (m(xi) * torch.linspace(-1, 1, 5)).sum().backward()
        grads.append([xi.grad, *(p.grad for p in m.parameters())])
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_attention_rollout_follows_the_attention():
    """Every token of every layer attends to one patch only (the bottom-left one), and the layers
    leave the tokens unchanged: the rollout lights that patch's region of the image."""
    torch.manual_seed(0)
    model = create_model("hdkd_student", num_classes=3, img_size=IMG, backend="torch").eval()
    dflt = model.dflt
    grid = dflt.feature_size[0] // dflt.patch_size
    lead = 2 if dflt.distillation else 1  # class (and distillation) token, then the patches
    target = lead + grid * (grid - 1)  # row-major: the first patch of the last row
    with torch.no_grad():
        dflt.pos_embed.zero_()
        dflt.pos_embed[0, target, 0] = 50.0  # only the target token is large along channel 0
        for layer in dflt.layers:
            attn, inner = layer.attn, layer.attn.heads * layer.attn.head_dim
            attn.norm.weight.zero_()
            attn.norm.weight[0] = 1.0
            attn.norm.bias.zero_()
            attn.norm.bias[1] = 1.0
            attn.qkv.weight.zero_()
            attn.qkv.weight[:inner, 1] = 1.0  # every query is all ones
            attn.qkv.weight[inner:2 * inner, 0] = 1.0  # a key is its token's channel 0
            for linear in (attn.proj, layer.ff.fc2):
                linear.weight.zero_()
                linear.bias.zero_()
    m = attention_rollout(model, torch.randn(2, 3, IMG, IMG))
    cell = IMG // grid
    assert m.shape == (2, IMG, IMG)
    for one in m:  # upsampled from the patch grid: up to half a patch of blur past the edge
        row, col = np.unravel_index(one.argmax(), one.shape)
        assert row >= IMG - cell and col < cell
        assert one[-cell:, :cell].sum() / one.sum() > 0.6
        assert one[-cell - cell // 2:, :cell + cell // 2].sum() / one.sum() > 0.999
    with pytest.raises(ValueError, match="HDKDTeacher has none"):
        attention_rollout(create_model("hdkd_teacher", num_classes=3, img_size=IMG),
                          torch.randn(1, 3, IMG, IMG))


def _checkpoint(tmp_path, name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, img_size=IMG)
    path = tmp_path / f"{name}.pt"
    ckpt.save_atomic(ckpt.make_model_checkpoint(name, model, ["cyst", "normal", "tumour"]), path)
    return path


def _image_folder(root):
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    g = np.random.default_rng(0)
    for folder in ("a", "b"):  # the same file name twice
        Image.fromarray(g.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(root / folder / "x.png")
    Image.fromarray(g.integers(0, 256, (40, 40), dtype=np.uint8)).save(root / "gray.png")
    (root / "bad.png").write_bytes(b"no image")


@pytest.mark.parametrize("name,method", [("hdkd_teacher", "gradcam"), ("hdkd", "attention"),
                                         ("hdkd_student", "gradcam++")])
def test_explain_command_writes_one_png_per_image(tmp_path, capsys, name, method):
    _image_folder(tmp_path / "in")
    out = tmp_path / "maps"
    code = main(["explain", str(_checkpoint(tmp_path, name)), str(tmp_path / "in"), "--out",
                 str(out), "--method", method, "--target-class", "normal"])
    assert code == 1  # bad.png
    assert "bad.png" in capsys.readouterr().err
    tag = method.replace("+", "p")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"x-2.{tag}.png", f"x-3.{tag}.png", f"gray.{tag}.png"])
    for p in out.iterdir():
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] >= 300


@pytest.mark.parametrize("args,message", [
    (["--target-class", "fracture"], "unknown class 'fracture'; the model's classes are: cyst"),
    (["--method", "attention"], "needs a transformer; hdkd_teacher has none"),
])
def test_explain_errors_name_the_problem(tmp_path, capsys, args, message):
    _image_folder(tmp_path / "in")
    ck = _checkpoint(tmp_path, "hdkd_teacher")
    assert main(["explain", str(ck), str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                 *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()
