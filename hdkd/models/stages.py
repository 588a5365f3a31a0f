"""The three convolutional stages shared by the teacher and the student."""
from __future__ import annotations

from torch import nn

from ..nn import MBCSA, ConvBNGELU


def make_stages(in_chans: int, depths, widths, backend: str) -> tuple[nn.Sequential, ...]:
    """stage1: ConvBNGELU blocks, stages 2 and 3: MBCSA blocks; the first block of each stage
    halves the resolution."""
    stem = [ConvBNGELU(in_chans if j == 0 else widths[0], widths[0], 3, downsample=j == 0,
                       backend=backend) for j in range(depths[0])]
    stages = [nn.Sequential(*stem)]
    for s in (1, 2):
        blocks = [MBCSA(widths[s - 1] if j == 0 else widths[s], widths[s], 3, downsample=j == 0,
                        backend=backend) for j in range(depths[s])]
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
