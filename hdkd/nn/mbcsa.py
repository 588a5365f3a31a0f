"""MBCSA: the inverted-residual block with channel-spatial attention (docs/model.md, section 7),
drop-in."""
from __future__ import annotations

from torch import Tensor, nn

from .. import ops
from ..ops.functional import mbcsa_eval_runner
from ..ops.reference import BatchNormState, MBCSAWeights, fold_mbcsa_float32
from ._validate import odd_kernel, positive_int
from .channel_spatial_attention import ChannelSpatialAttention
from .eval_cache import EvalCache, caching_allowed, records_grad
from .eval_plan import EvalPlan, input_key, may_plan


def _bn_state(bn: nn.BatchNorm2d) -> BatchNormState:
    return BatchNormState(bn.weight, bn.bias, bn.running_mean, bn.running_var)


class MBCSA(nn.Module):
    """out = shortcut(x) + body(BN(x)), constructor as the original's MBCSA.

    body (expansion > 1): 1x1 expand (stride 2 when downsampling) -> BN -> GELU -> depthwise
    k x k -> BN -> GELU -> channel-spatial attention (the `attention` submodule, named as in the
    original checkpoints) -> 1x1 project -> BN. Expansion 1: depthwise k x k (strided when
    downsampling) -> BN -> GELU -> 1x1 project -> BN, no attention. shortcut: identity, or
    MaxPool(3, 2, 1) -> 1x1 conv when downsampling.

    The forward runs the fused MBCSA op of the selected backend; parameters and buffers are those
    of ordinary nn.Conv2d / nn.BatchNorm2d submodules, and BN running statistics are updated in
    training exactly as nn.BatchNorm2d does (all BNs share pre_norm's momentum and eps). An eval
    forward without gradients folds the BNs into the convs once and reuses the folded weights
    until a parameter or buffer changes (hdkd.nn.eval_cache), and the next such forward on an
    input like the last runs the same route without checking and choosing again
    (hdkd.nn.eval_plan).
    """

    def __init__(self, inp: int, oup: int, kernel_size: int = 3, downsample: bool = False,
                 expansion: float = 4, backend: str = "auto"):
        super().__init__()
        positive_int("MBCSA", "inp", inp)
        positive_int("MBCSA", "oup", oup)
        odd_kernel("MBCSA", "kernel_size", kernel_size)
        if isinstance(expansion, bool) or not isinstance(expansion, (int, float)) or expansion < 1:
            raise ValueError(f"MBCSA: expected expansion >= 1, got {expansion!r}")
        if not downsample and inp != oup:
            raise ValueError(f"MBCSA: without downsample the shortcut is the identity, so inp must "
                             f"equal oup; got inp={inp}, oup={oup} (pass downsample=True to "
                             f"change the width)")
        self.inp, self.oup, self.downsample = inp, oup, bool(downsample)
        self.backend = ops.validate_backend_name(backend)
        hidden = int(inp * expansion)
        self.hidden = hidden
        stride = 2 if downsample else 1

        self.pre_norm = nn.BatchNorm2d(inp)
        if expansion == 1:
            self.expand = self.expand_norm = self.attention = None
            self.dw = nn.Conv2d(inp, inp, kernel_size, stride, kernel_size // 2, groups=inp,
                                bias=False)
        else:
            self.expand = nn.Conv2d(inp, hidden, 1, stride, 0, bias=False)
            self.expand_norm = nn.BatchNorm2d(hidden)
            self.dw = nn.Conv2d(hidden, hidden, kernel_size, 1, kernel_size // 2, groups=hidden,
                                bias=False)
        self.dw_norm = nn.BatchNorm2d(hidden)
        if expansion != 1:
            self.attention = ChannelSpatialAttention(hidden, backend=backend)
        self.project = nn.Conv2d(hidden, oup, 1, bias=False)
        self.project_norm = nn.BatchNorm2d(oup)
        self.shortcut = nn.Conv2d(inp, oup, 1, bias=False) if downsample else None
        self.folded_cache = EvalCache()
        self.eval_plan = EvalPlan()

    def weights(self) -> MBCSAWeights:
        """The block's tensors as the ops take them (no copies)."""
        att = self.attention
        return MBCSAWeights(
            pre_norm=_bn_state(self.pre_norm),
            expand=None if self.expand is None else self.expand.weight,
            expand_norm=None if self.expand_norm is None else _bn_state(self.expand_norm),
            dw=self.dw.weight,
            dw_norm=_bn_state(self.dw_norm),
            ca_fc1=None if att is None else att.channel_attention.fc1.weight,
            ca_fc2=None if att is None else att.channel_attention.fc2.weight,
            sa_weight=None if att is None else att.spatial_attention.conv.weight,
            project=self.project.weight,
            project_norm=_bn_state(self.project_norm),
            shortcut=None if self.shortcut is None else self.shortcut.weight,
        )

    def batch_norms(self) -> list[nn.BatchNorm2d]:
        return [m for m in (self.pre_norm, self.expand_norm, self.dw_norm, self.project_norm)
                if m is not None]

    def forward(self, x: Tensor) -> Tensor:
        planned = may_plan(self, x) and self.expand is not None
        if planned:
            key = (*input_key(x), self.backend, ops.get_backend(), self.pre_norm.eps)
            run = self.eval_plan.get(self, key)
            if run is not None:
                return run(x)
        momentum = self.pre_norm.momentum
        if momentum is None:  # nn.BatchNorm2d's cumulative moving average
            momentum = 1.0 / float(self.pre_norm.num_batches_tracked + 1)
        w, eps = self.weights(), self.pre_norm.eps
        folded, sources = None, self._fold_sources(w)
        # traced or compiled: the backend folds inside the graph (FLOP counters see the
        # reference's count there)
        if (not self.training and self.expand is not None and not records_grad(self, x)
                and caching_allowed(sources)):
            folded = self.folded_cache.get(sources, lambda: fold_mbcsa_float32(w, eps),
                                           extra=(eps,))
        if planned and folded is not None:
            run = mbcsa_eval_runner(x, w, momentum, eps, backend=self.backend, folded=folded)
            self.eval_plan.set(self, key, run)
            return run(x)
        out = ops.mbcsa(x, w, self.training, momentum, eps, backend=self.backend, folded=folded)
        if self.training:
            for bn in self.batch_norms():
                bn.num_batches_tracked.add_(1)
        return out

    @staticmethod
    def _fold_sources(w: MBCSAWeights) -> list:
        return [t for v in w for t in (v if isinstance(v, BatchNormState) else (v,))]

    def extra_repr(self) -> str:
        return (f"inp={self.inp}, oup={self.oup}, hidden={self.hidden}, "
                f"downsample={self.downsample}, backend={self.backend!r}")
