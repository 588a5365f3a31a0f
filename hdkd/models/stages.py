"""The three convolutional stages shared by the teacher and the students, and the feature API
built on them (forward_features, forward_intermediates, feature_info: what timm's feature tools
call)."""
# no `from __future__ import annotations`: torch.fx copies forward's annotations into the code it
# generates, which TorchScript then compiles and where string annotations do not resolve
from functools import partial
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..nn import MBCSA, ConvBNGELU
from .scriptable import ScriptableConvBNGELU, ScriptableMBCSA

STAGE_NAMES = ("stage1", "stage2", "stage3")


def make_stages(in_chans: int, depths, widths, backend: str,
                scriptable: bool = False) -> tuple[nn.Sequential, ...]:
    """stage1: ConvBNGELU blocks, stages 2 and 3: MBCSA blocks; the first block of each stage
    halves the resolution. scriptable: their TorchScript-compatible twins (same parameters)."""
    if scriptable:
        stem_block, block = ScriptableConvBNGELU, ScriptableMBCSA
    else:
        stem_block = partial(ConvBNGELU, backend=backend)
        block = partial(MBCSA, backend=backend)
    stem = [stem_block(in_chans if j == 0 else widths[0], widths[0], 3, downsample=j == 0)
            for j in range(depths[0])]
    stages = [nn.Sequential(*stem)]
    for s in (1, 2):
        blocks = [block(widths[s - 1] if j == 0 else widths[s], widths[s], 3, downsample=j == 0)
                  for j in range(depths[s])]
        stages.append(nn.Sequential(*blocks))
    return tuple(stages)


def stage_output_size(img_size: int) -> int:
    """Each stage halves the size (stride-2 conv with padding 1: ceil(size / 2))."""
    for _ in range(3):
        img_size = (img_size + 1) // 2
    return img_size


def check_input(model: str, x, in_chans: int, img_size: int) -> None:
    from ..ops.checks import check_activation

    check_activation(model, "input", x, channels=in_chans)
    if x.shape[2] != img_size or x.shape[3] != img_size:
        raise ValueError(f"{model}: expected {img_size} x {img_size} images (the model was built "
                         f"with img_size={img_size}), got {x.shape[2]} x {x.shape[3]}; create it "
                         f"with img_size={x.shape[2]} to use that size")


def check_num_classes(model: str, num_classes, global_pool: str) -> int:
    """num_classes >= 0 (0: no classifier); a classifier needs the pooled features."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"{model}: expected num_classes to be an int >= 0 (0: no classifier), "
                         f"got {num_classes!r}")
    if num_classes and not global_pool:
        raise ValueError(f"{model}: global_pool='' returns the unpooled stage-3 feature map, "
                         f"which has no classifier; pass num_classes=0 with it (got "
                         f"num_classes={num_classes})")
    return num_classes


def check_global_pool(model: str, global_pool, allowed: tuple[str, ...]) -> str:
    if global_pool not in allowed:
        raise ValueError(f"{model}: expected global_pool to be one of {allowed}, got "
                         f"{global_pool!r}")
    return global_pool


def take_indices(indices: Optional[Union[int, Sequence[int]]]) -> list[int]:
    """Stage indices (0, 1, 2) to return: None: all, an int n: the last n, a sequence: those
    (negative counts from the end)."""
    n = len(STAGE_NAMES)
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"expected indices (the last n stages) between 1 and {n}, "
                             f"got {indices}")
        return list(range(n - indices, n))
    taken = [i + n if i < 0 else i for i in indices]
    if not taken or any(not 0 <= i < n for i in taken):
        raise ValueError(f"expected stage indices in [-{n}, {n - 1}], got {list(indices)}")
    return taken


class StagedModel(nn.Module):
    """Base of the teacher and the students: stage1..3 (reductions 2, 4, 8) and the feature API.
    Subclasses build the stages with init_stages and define forward_head.

    scriptable=True builds plain-PyTorch twins of the blocks (same parameters, no backend), which
    torch.jit.script compiles."""

    def init_stages(self, img_size: int, in_chans: int, depths, widths, backend: str,
                    scriptable: bool) -> None:
        if scriptable and backend != "auto":
            raise ValueError(f"{type(self).__name__}: scriptable=True builds plain-PyTorch blocks, "
                             f"which have no backend; got backend={backend!r}")
        self.img_size, self.in_chans, self.scriptable = img_size, in_chans, scriptable
        self.stage1, self.stage2, self.stage3 = make_stages(in_chans, depths, widths, backend,
                                                            scriptable)
        self.num_features = widths[2]
        self.feature_info = [dict(num_chs=w, reduction=2 ** (i + 1), module=name)
                             for i, (w, name) in enumerate(zip(widths, STAGE_NAMES, strict=True))]

    def set_head_options(self, num_classes: int, global_pool: str,
                         allowed_pools: tuple[str, ...]) -> None:
        """Check global_pool and num_classes for it, then set both (neither when one is refused)."""
        model = type(self).__name__
        check_global_pool(model, global_pool, allowed_pools)
        self.num_classes = check_num_classes(model, num_classes, global_pool)
        self.global_pool = global_pool

    def stage_outputs(self, x: Tensor) -> list[Tensor]:
        if not torch.jit.is_scripting():
            check_input(type(self).__name__, x, self.in_chans, self.img_size)
        f1 = self.stage1(x)
        f2 = self.stage2(f1)
        return [f1, f2, self.stage3(f2)]

    def forward_features(self, x: Tensor) -> Tensor:
        """The stage-3 feature map, B x num_features x img_size/8 x img_size/8."""
        return self.stage_outputs(x)[-1]

    def forward(self, x: Tensor, return_features: bool = False):
        """Output of forward_head; with return_features, (output, [stage1, stage2, stage3
        outputs]) from the same single pass."""
        features = self.stage_outputs(x)
        out = self.forward_head(features[-1])
        if not torch.jit.is_scripting():
            # isinstance, not truth: under torch.fx the flag is a Proxy; the plain forward is traced
            if isinstance(return_features, bool) and return_features:
                return out, features
        return out

    def forward_intermediates(self, x: Tensor, indices=None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """(final stage output, [outputs of the stages in `indices`]) as timm defines it; the
        stages have no norm layers, so `norm` changes nothing."""
        if output_fmt != "NCHW":
            raise ValueError(f"{type(self).__name__}: expected output_fmt='NCHW', "
                             f"got {output_fmt!r}")
        taken = take_indices(indices)
        check_input(type(self).__name__, x, self.in_chans, self.img_size)
        last = max(taken) if stop_early else len(STAGE_NAMES) - 1
        intermediates = []
        for i, name in enumerate(STAGE_NAMES[:last + 1]):
            x = getattr(self, name)(x)
            if i in taken:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def __prepare_scriptable__(self):
        # torch.jit.script calls this first: say what to do instead of failing deep in a block
        if not self.scriptable:
            raise RuntimeError(f"{type(self).__name__}: torch.jit.script needs a model built with "
                               f"scriptable=True (plain-PyTorch blocks); the fused blocks "
                               f"dispatch in Python (torch.compile, torch.export and torch.fx "
                               f"take them as they are)")
        return self

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of `indices` (and the head with prune_head)."""
        taken = take_indices(indices)
        for name in STAGE_NAMES[max(taken) + 1:]:
            setattr(self, name, nn.Identity())
        if prune_head:
            self.reset_classifier(0, "")
        return taken
