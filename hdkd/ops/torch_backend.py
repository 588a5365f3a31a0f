"""The `torch` backend: the reference functions (hdkd.ops.reference), always available."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from . import reference
from .backends import Backend, register_backend
from .contract import BackendOps
from .reference import FoldedMBCSA, MBCSAWeights


def mbcsa_train(x: Tensor, w: MBCSAWeights, momentum: float, eps: float) -> Tensor:
    return reference.mbcsa(x, w, True, momentum, eps)


def mbcsa_eval(x: Tensor, w: MBCSAWeights, momentum: float, eps: float,
               folded: Optional[FoldedMBCSA] = None) -> Tensor:
    """folded is ignored: the reference folds nothing."""
    return reference.mbcsa(x, w, False, momentum, eps)


register_backend(Backend(
    name="torch", devices=lambda: ("cpu", "cuda", "mps", "xpu"),
    describe=lambda: "plain PyTorch (the reference)",
    ops=BackendOps(channel_spatial_attention=reference.channel_spatial_attention,
                   dwconv_bn_gelu=reference.dwconv_bn_gelu, mbcsa_train=mbcsa_train,
                   mbcsa_eval=mbcsa_eval)))
