"""The backend contract: the signature of each public op's implementation, and BackendOps, one
typed field per op of the op table (None where a backend lacks the op). The fields are checked
against hdkd.ops.op_table.OP_NAMES at import, so a misspelt op fails there, not as a silent miss.
What an implementation must compute: docs/architecture.md, section 4."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional, Protocol

from torch import Tensor

from .op_table import OP_NAMES
from .reference import BatchNormState, FoldedMBCSA, MBCSAWeights


class ChannelSpatialAttention(Protocol):
    def __call__(self, h: Tensor, fc1_weight: Tensor, fc2_weight: Tensor,
                 sa_weight: Tensor) -> Tensor: ...


class DwconvBnGelu(Protocol):
    """(y, avg, max); bn's running statistics updated in place when training."""

    def __call__(self, x: Tensor, dw_weight: Tensor, bn: BatchNormState, training: bool,
                 momentum: float, eps: float) -> tuple[Tensor, Tensor, Tensor]: ...


class MBCSATrain(Protocol):
    """The block with batch statistics; running statistics updated in place."""

    def __call__(self, x: Tensor, w: MBCSAWeights, momentum: float, eps: float) -> Tensor: ...


class MBCSAEval(Protocol):
    """The block with running statistics; folded: the caller's cached fold_mbcsa_float32(w, eps),
    which a backend may use or ignore."""

    def __call__(self, x: Tensor, w: MBCSAWeights, momentum: float, eps: float,
                 folded: Optional[FoldedMBCSA] = None) -> Tensor: ...


@dataclass(frozen=True)
class BackendOps:
    channel_spatial_attention: Optional[ChannelSpatialAttention] = None
    dwconv_bn_gelu: Optional[DwconvBnGelu] = None
    mbcsa_train: Optional[MBCSATrain] = None
    mbcsa_eval: Optional[MBCSAEval] = None

    def implemented(self) -> tuple[str, ...]:
        """The names of the ops this backend has."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name) is not None)


if tuple(f.name for f in fields(BackendOps)) != OP_NAMES:
    raise ImportError(f"hdkd.ops.contract.BackendOps has fields "
                      f"{[f.name for f in fields(BackendOps)]}, the op table {list(OP_NAMES)}")
