"""Linear layers on the CPU eval path from weights prepacked once into oneDNN's blocked layout.

oneDNN's matmul reorders a plain weight into its blocked layout on every call; prepacked, it
reads the weight as is. At the DFLT's shapes (198 tokens x 256..1024 features, 2 threads) a
packed float32 linear runs 10-25% faster than F.linear (MKL), a packed bfloat16 one 15-20% faster
than F.linear under autocast, and the FeedForward's GELU rides along as oneDNN's post-op
(benchmarks/NOTES.md). The packed weights live in an EvalCache of the module that owns them.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from .conv import MKLDNN


class PackedLinear(NamedTuple):
    weight: Tensor  # an opaque oneDNN tensor in its blocked layout
    bias: Optional[Tensor]
    dtype: torch.dtype  # what the weight was packed in: the input is cast to it


def packing_supported(x: Tensor, dtype: torch.dtype) -> bool:
    """Whether packed linears can run x's layer in dtype (float32, or bfloat16 where oneDNN has
    it) on this machine."""
    if x.device.type != "cpu" or not MKLDNN:
        return False
    if dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return dtype == torch.float32


def pack_linear(linear: nn.Linear, dtype: torch.dtype) -> PackedLinear:
    weight = linear.weight.detach().to(dtype).contiguous()
    bias = None if linear.bias is None else linear.bias.detach().to(dtype)
    return PackedLinear(torch.ops.mkldnn._reorder_linear_weight(weight), bias, dtype)


def packed_linear(x: Tensor, p: PackedLinear, gelu: bool = False) -> Tensor:
    """F.linear(x, weight, bias) in p.dtype (then GELU, exact erf form, when gelu), as autocast
    would run it: x cast to p.dtype, the result in p.dtype."""
    x = x.to(p.dtype).contiguous()
    if gelu:
        return torch.ops.mkldnn._linear_pointwise(x, p.weight, p.bias, "gelu", [], "none")
    return torch.ops.mkldnn._linear_pointwise(x, p.weight, p.bias, "none", [], "")
