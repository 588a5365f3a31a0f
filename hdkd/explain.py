"""Heatmaps of where a model looked: Grad-CAM and Grad-CAM++ on the last convolutional stage
(the pytorch-grad-cam library), and attention rollout through the student's transformer.

Grad-CAM needs gradients of the chosen class's logit with respect to the stage-3 activations, so
the model runs in eval mode with autograd on: the fused ops take their differentiable path on
every backend. Attention rollout (Abnar and Zuidema, 2020) is written here because
pytorch-grad-cam has none for a model whose attention runs inside scaled_dot_product_attention:
it recomputes each layer's attention probabilities from the layer's input.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

METHODS = ("gradcam", "gradcam++", "attention")


def missing_packages(method: str) -> list[str]:
    import importlib.util

    if method == "attention":
        return []
    return [] if importlib.util.find_spec("pytorch_grad_cam") else ["grad-cam"]


def heatmaps(model: nn.Module, images: Tensor, method: str,
             classes: Sequence[int]) -> np.ndarray:
    """N x H x W heatmaps in [0, 1] (each scaled to its own maximum), one per image of `images`
    (N x 3 x H x W, normalised model input), for the class classes[i] of image i."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if len(classes) != images.shape[0]:
        raise ValueError(f"expected one class per image, got {len(classes)} for "
                         f"{images.shape[0]} images")
    model.eval()
    if method == "attention":
        return attention_rollout(model, images)
    missing = missing_packages(method)
    if missing:
        raise ImportError(f"--method {method} needs pytorch-grad-cam: pip install 'hdkd[explain]'")
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_class = GradCAM if method == "gradcam" else GradCAMPlusPlus
    with torch.enable_grad(), cam_class(model=model, target_layers=[model.stage3]) as cam:
        return cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in classes])


@torch.no_grad()
def attention_rollout(model: nn.Module, images: Tensor) -> np.ndarray:
    """How much the output tokens (class, and distillation when present) draw on each patch,
    through every transformer layer: the product over layers of (mean-over-heads attention + I),
    rows renormalised, read at the output tokens' rows and upsampled from the patch grid to the
    image. Only models with a transformer (the students' DFLT) have one."""
    require_transformer(model, type(model).__name__)
    dflt = model.dflt
    probabilities: list[Tensor] = []

    def record(attn: nn.Module, args) -> None:
        x = args[0]
        b, n, _ = x.shape
        q, k, _ = attn.qkv(attn.norm(x)).reshape(b, n, 3, attn.heads, attn.head_dim).permute(
            2, 0, 3, 1, 4).unbind(0)
        scores = (q.float() @ k.float().transpose(-2, -1)) * attn.head_dim ** -0.5
        probabilities.append(scores.softmax(-1).mean(1))  # b x n x n, averaged over heads

    hooks = [layer.attn.register_forward_pre_hook(record) for layer in dflt.layers]
    try:
        model(images)
    finally:
        for h in hooks:
            h.remove()
    lead = 2 if dflt.distillation else 1
    rollout = None
    for a in probabilities:
        a = a + torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    to_patches = rollout[:, :lead, lead:].mean(1)  # b x patches
    fh, fw = dflt.feature_size
    grid = to_patches.reshape(-1, 1, fh // dflt.patch_size, fw // dflt.patch_size)
    maps = F.interpolate(grid, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    maps = maps - maps.amin((1, 2), keepdim=True)
    return (maps / maps.amax((1, 2), keepdim=True).clamp_min(1e-12)).cpu().numpy()


def require_transformer(model: nn.Module, name: str) -> None:
    """Attention rollout needs a transformer (the students' DFLT); `name` names the model."""
    if getattr(model, "dflt", None) is None:
        raise ValueError(f"--method attention needs a transformer; {name} has none (use gradcam "
                         f"or gradcam++)")


def render(image: Tensor, heatmap: np.ndarray, title: str) -> bytes:
    """A PNG: `image` (3 x H x W in [0, 1]) with the heatmap over it and the title above."""
    import io

    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    fig = Figure(figsize=(4, 4.4), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.imshow(heatmap, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def resolve_class(name: Optional[str], classes: Sequence[str]) -> Optional[int]:
    """The index of class `name` (None: each image's predicted class)."""
    if name is None:
        return None
    if name not in classes:
        raise ValueError(f"unknown class {name!r}; the model's classes are: {', '.join(classes)}")
    return list(classes).index(name)
