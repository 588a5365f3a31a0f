"""DFLT: the student's small ViT over the stage-3 feature map (docs/model.md, section 10)."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.backends import get_backend, validate_backend_name
from ..ops.checks import check_activation
from ..ops.measured import compute_dtype
from ._validate import positive_int
from .eval_cache import EvalCache, caching_allowed, records_grad
from .eval_plan import EvalPlan, input_key, may_plan
from .packed_linear import PackedLinear, pack_linear, packed_linear, packing_supported


def patchify(x: Tensor, patch: int) -> Tensor:
    """B x C x H x W -> B x (H/p * W/p) x (p * p * C); each token is its patch flattened in the
    order (row-in-patch, col-in-patch, channel), tokens row-major over the patch grid."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention: LN -> qkv (no bias) -> softmax(q k^T / sqrt(d)) v ->
    out projection (with bias) -> dropout."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, n, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        p = self.dropout.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.dropout(self.proj(out.transpose(1, 2).reshape(b, n, -1)))

    def forward_packed(self, x: Tensor, qkv: PackedLinear, proj: PackedLinear) -> Tensor:
        """forward in eval, with the linears from their packed weights."""
        b, n, _ = x.shape
        q, k, v = packed_linear(self.norm(x), qkv).reshape(
            b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return packed_linear(out.transpose(1, 2).reshape(b, n, -1), proj)


class FeedForward(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout (no norm in front, as in the original)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))

    def forward_packed(self, x: Tensor, fc1: PackedLinear, fc2: PackedLinear) -> Tensor:
        """forward in eval, with the linears from their packed weights (GELU fused into fc1)."""
        return packed_linear(packed_linear(x, fc1, gelu=True), fc2)


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.attn = Attention(dim, heads, head_dim, dropout)
        self.ff = FeedForward(dim, mlp_dim, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x)
        return x + self.ff(x)

    def linears(self) -> list[nn.Linear]:
        return [self.attn.qkv, self.attn.proj, self.ff.fc1, self.ff.fc2]

    def forward_packed(self, x: Tensor, packed: list[PackedLinear]) -> Tensor:
        """forward in eval, with packed (qkv, proj, fc1, fc2) in the order of linears()."""
        qkv, proj, fc1, fc2 = packed
        x = x + self.attn.forward_packed(x, qkv, proj)
        return x + self.ff.forward_packed(x, fc1, fc2)


class PackedDFLT(NamedTuple):
    patch_proj: PackedLinear
    layers: list[list[PackedLinear]]


class DFLT(nn.Module):
    """Patchify p x p -> LN -> Linear -> LN -> [class token, (distillation token), tokens] +
    position embedding -> depth x TransformerLayer -> LN.

    Returns the class-token feature, or (class, distillation) token features when distillation.
    feature_size: the (H, W) of the input feature map, which fixes the position embedding.

    An eval forward without gradients on the CPU, in float32 or bfloat16 (autocast or bfloat16
    input), runs its linears from weights prepacked for oneDNN (hdkd.nn.packed_linear), packed
    once and cached until a weight changes (hdkd.nn.eval_cache); the next such forward on an
    input like the last runs them without checking again (hdkd.nn.eval_plan). backend="torch"
    (module or process-wide) keeps nn.Linear.
    """

    def __init__(self, in_channels: int = 192, feature_size=(28, 28), patch_size: int = 2,
                 dim: int = 256, depth: int = 3, heads: int = 8, head_dim: int = 32,
                 mlp_ratio: int = 4, distillation: bool = True, dropout: float = 0.0,
                 emb_dropout: float = 0.0, backend: str = "auto"):
        super().__init__()
        self.backend = validate_backend_name(backend)
        for name, v in (("in_channels", in_channels), ("patch_size", patch_size), ("dim", dim),
                        ("depth", depth), ("heads", heads), ("head_dim", head_dim),
                        ("mlp_ratio", mlp_ratio)):
            positive_int("DFLT", name, v)
        fh, fw = (feature_size, feature_size) if isinstance(feature_size, int) else feature_size
        if fh % patch_size or fw % patch_size:
            raise ValueError(f"DFLT: expected feature_size divisible by patch_size={patch_size}, "
                             f"got {(fh, fw)}")
        self.in_channels, self.feature_size, self.patch_size = in_channels, (fh, fw), patch_size
        self.distillation = distillation
        num_tokens = (fh // patch_size) * (fw // patch_size)
        patch_dim = in_channels * patch_size * patch_size
        self.patch_norm = nn.LayerNorm(patch_dim)
        self.patch_proj = nn.Linear(patch_dim, dim)
        self.embed_norm = nn.LayerNorm(dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dist_token = nn.Parameter(torch.randn(1, 1, dim)) if distillation else None
        self.pos_embed = nn.Parameter(torch.randn(1, num_tokens + 1 + int(distillation), dim))
        self.pos_drop = nn.Dropout(emb_dropout)
        self.layers = nn.ModuleList(TransformerLayer(dim, heads, head_dim, dim * mlp_ratio, dropout)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.packed_cache = EvalCache()
        self.eval_plan = EvalPlan()

    def forward(self, x: Tensor):
        check_activation("DFLT", "input", x, channels=self.in_channels)
        if tuple(x.shape[2:]) != self.feature_size:
            raise ValueError(f"DFLT: expected a {self.feature_size[0]} x {self.feature_size[1]} "
                             f"feature map (its position embedding is sized for it), got "
                             f"{x.shape[2]} x {x.shape[3]}")
        planned = may_plan(self, x)
        if planned:
            key = (*input_key(x), self.backend, get_backend())
            packed = self.eval_plan.get(self, key)
            if packed is not None:
                return self._forward(x, packed)
        packed = self._packed(x)
        if planned and packed is not None:
            self.eval_plan.set(self, key, packed)
        return self._forward(x, packed)

    def _forward(self, x: Tensor, packed: Optional[PackedDFLT]):
        """The forward after the checks: the submodules, or the packed linears when given."""
        patches = self.patch_norm(patchify(x, self.patch_size))
        tokens = self.embed_norm(self.patch_proj(patches) if packed is None
                                 else packed_linear(patches, packed.patch_proj))
        b = tokens.shape[0]
        lead = [self.cls_token.expand(b, -1, -1)]
        if self.distillation:
            lead.append(self.dist_token.expand(b, -1, -1))
        x = self.pos_drop(torch.cat([*lead, tokens], dim=1) + self.pos_embed)
        for i, layer in enumerate(self.layers):
            x = layer(x) if packed is None else layer.forward_packed(x, packed.layers[i])
        x = self.norm(x)
        return (x[:, 0], x[:, 1]) if self.distillation else x[:, 0]

    def _packed(self, x: Tensor):
        """The packed linears for this forward, or None where the submodules run: training,
        gradients, backend "torch", tracing, compiling or exporting (the graph then has the
        reference's ops), inference-tensor weights, a dtype or device oneDNN does not serve, and
        forward hooks on a submodule (attention rollout's, a feature probe's: they would not
        fire)."""
        name = self.backend if self.backend != "auto" else get_backend()
        dtype = compute_dtype(x)
        if (self.training or name == "torch" or torch.compiler.is_exporting()
                or not packing_supported(x, dtype) or records_grad(self, x)
                or self._submodule_hooked()):
            return None
        sources = [t for lin in self._linears() for t in (lin.weight, lin.bias)]
        if not caching_allowed(sources):
            return None
        return self.packed_cache.get(sources, lambda: self._pack(dtype), extra=(dtype,))

    def _submodule_hooked(self) -> bool:
        return any(m._forward_hooks or m._forward_pre_hooks
                   for m in self.modules() if m is not self)

    def _linears(self) -> list[nn.Linear]:
        return [self.patch_proj, *(lin for layer in self.layers for lin in layer.linears())]

    def _pack(self, dtype: torch.dtype) -> PackedDFLT:
        return PackedDFLT(pack_linear(self.patch_proj, dtype),
                          [[pack_linear(lin, dtype) for lin in layer.linears()]
                           for layer in self.layers])
