"""What the conformance suite (tests/test_conformance.py) runs: the backends under test, the one
shape grid every backend is held to, and the float64 inputs of each op.

A new backend is tested by adding a `BackendUnderTest` to BACKENDS; a new registry op by a test
in test_conformance.py over the same BACKENDS and GRID."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import pytest
import torch

import cuda_emulation
from ext_env import EXT, EXT_REASON
from op_cases import ext_cases, triton_cases
from triton_env import DEVICE as TRITON_DEVICE, _reason as TRITON_REASON

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "channels_last", "strided"]


@dataclass(frozen=True)
class BackendUnderTest:
    """name: the test id; registry: the registered backend whose ops run (hdkd.ops.backends);
    device: where the inputs live; unavailable: the reason to skip, or None; namespace: the
    torch.ops namespace put in place of torch.ops.hdkd while the test runs (the CUDA emulation
    runs the ext backend's Python on the emulated kernels); custom_ops(layout): (name, op, args)
    of the backend's custom ops for torch.library.opcheck; dtypes: the dtypes it is held to."""
    name: str
    registry: str
    device: str
    unavailable: Callable[[], Optional[str]]
    namespace: Optional[Callable[[], object]] = None
    custom_ops: Optional[Callable[[str], list]] = None
    dtypes: tuple = (torch.float32, torch.float16, torch.bfloat16)


def _ext_reason() -> Optional[str]:
    return None if EXT is not None else f"hdkd._C unavailable: {EXT_REASON}"


def _ext_cuda_reason() -> Optional[str]:
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if EXT is None or not EXT.build_info()["cuda"]:
        return "hdkd._C was built without its CUDA sources"
    return None


def _emulation_reason() -> Optional[str]:
    # built by the same toolchain as hdkd._C; CI requires both
    return None if EXT is not None else (
        f"no hdkd._C, so no C++ toolchain assumed for the emulation: {EXT_REASON}")


BACKENDS = [
    # the reference itself: in half precision it is eager PyTorch rounding at every step, the
    # yardstick the compiled backends' blocks are measured against, not a subject
    BackendUnderTest("torch", "torch", "cpu", lambda: None, dtypes=(torch.float32,)),
    BackendUnderTest("triton", "triton", str(TRITON_DEVICE), lambda: TRITON_REASON,
                     custom_ops=triton_cases),
    BackendUnderTest("ext_cpu", "ext", "cpu", _ext_reason,
                     custom_ops=lambda layout: ext_cases(layout)),
    BackendUnderTest("ext_cuda", "ext", "cuda", _ext_cuda_reason,
                     custom_ops=lambda layout: ext_cases(layout, device="cuda")),
    BackendUnderTest("cuda_emulation", "ext", "cpu", _emulation_reason,
                     namespace=cuda_emulation.load,
                     custom_ops=lambda layout: ext_cases(layout, ops=cuda_emulation.load())),
]
BACKEND_PARAMS = [pytest.param(b, id=b.name) for b in BACKENDS]


@dataclass(frozen=True)
class Shape:
    """One entry of the shape grid: the activation (B, C, H, W), the depthwise kernel size k that
    the depthwise op uses with it, and what the values are: "random", "ties" (maxima tied across
    pixels and channels) or "nan" (a few NaN inputs)."""
    name: str
    size: tuple
    k: int = 3
    values: str = "random"


# Batch 1, channels not a multiple of 8 (vector tails), H and W not multiples of any block;
# H = 1; more pixels than one 256-pixel reduction chunk; more channels than two warps of lanes;
# each depthwise kernel size (the kernels are specialised per size), with pixels only on the
# border (2, 10, 6, 4) or also inside it (every tap in the image: the unchecked path).
GRID = [
    Shape("b1_c19", (1, 19, 7, 5), k=3),
    Shape("b2_c37", (2, 37, 5, 7), k=3),
    Shape("h1", (3, 8, 1, 6), k=5),
    Shape("border_k5", (2, 10, 6, 4), k=5),
    Shape("interior_k7", (1, 9, 9, 8), k=7),
    Shape("266_pixels", (1, 6, 19, 14), k=3),
    Shape("c70_k1", (1, 70, 5, 3), k=1),
    # 19 channels: the CPU kernels' 8-wide vector loops and their scalar tails, and more than one
    # tile of pixels and of channels in the Triton interpreter (32 x 16), see ties and NaN
    Shape("ties", (2, 19, 6, 7), values="ties"),
    Shape("nan", (2, 19, 6, 7), values="nan"),
]


def with_dtypes_and_layouts(entries: list) -> list:
    """(entry, dtype, layout) params: each entry in each dtype once and each layout once, the
    pairing rotating from one entry to the next, so that every (dtype, layout) pair runs on every
    third entry (all 9 pairs for each entry would triple the suite's time)."""
    return [pytest.param(e, dtype, LAYOUTS[(i + j) % len(LAYOUTS)],
                         id=f"{e.name}-{str(dtype)[6:]}-{LAYOUTS[(i + j) % len(LAYOUTS)]}")
            for i, e in enumerate(entries) for j, dtype in enumerate(DTYPES)]


def attention_inputs(shape: Shape) -> list:
    """(h, fc1, fc2, sa_weight), float64. Ties: h holds integers in [-2, 2], so several pixels
    share each channel's max; in its first row a few channels are 0 and the others -1, so at
    those pixels several channels are tied at max_c(h * ca) = 0."""
    g = torch.Generator().manual_seed(sum(shape.size))
    b, c, _, _ = shape.size
    r = max(c // 16, 1)
    if shape.values == "ties":
        h = torch.randint(-2, 3, shape.size, generator=g).double()
        h[:, :, 0] = -1.0
        h[:, [0, 5, 9], 0] = 0.0
    else:
        h = torch.randn(shape.size, generator=g, dtype=torch.float64)
        if shape.values == "nan":
            h[0, 1, 2, 3] = h[1, 9, 0, 0] = float("nan")
    return [h, *(torch.randn(s, generator=g, dtype=torch.float64) * 0.3
                 for s in ((r, c, 1, 1), (c, r, 1, 1), (1, 2, 7, 7)))]


def dwconv_inputs(shape: Shape) -> list:
    """(x, weight, gamma, beta, running_mean, running_var), float64. Ties: x is constant on each
    channel plane and the weights and BN affine are positive, so every pixel whose k x k window
    lies inside the image has the channel's largest output."""
    g = torch.Generator().manual_seed(sum(shape.size) + shape.k)
    b, c, _, _ = shape.size
    k = shape.k
    if shape.values == "ties":
        x = torch.randint(1, 4, (b, c, 1, 1), generator=g).double().expand(shape.size)
        return [x.contiguous(), torch.randint(2, 12, (c, 1, k, k), generator=g).double() / 8,
                torch.randint(4, 12, (c,), generator=g).double() / 32,
                torch.randint(1, 8, (c,), generator=g).double() / 8,
                torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)]
    x = torch.randn(shape.size, generator=g, dtype=torch.float64)
    if shape.values == "nan":
        x[0, 1, 2, 3] = x[1, 9, 0, 0] = float("nan")
    return [x, torch.randn(c, 1, k, k, generator=g, dtype=torch.float64) * 0.4,
            torch.rand(c, generator=g, dtype=torch.float64) + 0.5,
            torch.randn(c, generator=g, dtype=torch.float64) * 0.1,
            torch.randn(c, generator=g, dtype=torch.float64) * 0.1,
            torch.rand(c, generator=g, dtype=torch.float64) + 0.5]


@dataclass(frozen=True)
class Block:
    """An MBCSA block of the grid: input (B, cin, H, W), cout, downsample, expansion."""
    name: str
    size: tuple
    cout: int
    downsample: bool = False
    expansion: int = 4


BLOCKS = [
    Block("b1_c5", (1, 5, 7, 6), 5),
    Block("down_c4_c6", (2, 4, 9, 9), 6, downsample=True),
    Block("h1_c16", (2, 16, 1, 5), 16),
    Block("266_pixels", (1, 6, 19, 14), 6),
    Block("expansion1", (2, 6, 7, 6), 6, expansion=1),
    Block("expansion1_down", (2, 4, 9, 8), 6, downsample=True, expansion=1),
]


def alternating_training(params: list) -> list:
    """params with a last value `training` alternating from one to the next: every entry (its
    three params alternate) and every dtype and layout run both in training and in eval."""
    return [pytest.param(*p.values, k % 2 == 0, id=f"{p.id}-{('eval', 'train')[k % 2 == 0]}")
            for k, p in enumerate(params)]
