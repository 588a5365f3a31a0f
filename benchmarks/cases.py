"""What the suites run on this device: implementations, dtypes, shapes.

Implementations ("impls"): "eager" (the reference, backend "torch"), "compile" (torch.compile of the
reference, default mode) and every other registered hdkd backend that is available here, runs on
this device and has the ops the level needs: new backends appear without changes here.
GPU: the anchors' shapes (docs/performance.md: batch 64, 224 px), bf16 autocast and float32,
channels_last.
CPU: scaled down (batch 8 for ops and blocks; batch 4 at 112 px for the model levels), float32. On
the CPU the compile peer runs at the block level only: inductor compiles C++ for every graph
(~20-30 s each on 2 cores), which the whole suite's 10-minute budget cannot afford at every level.
Smoke mode (--benchmark-disable) runs every body once on small shapes, with the compile peer only
on the first block shape.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable

import pytest
import torch
from torch import nn

from hdkd import flops
from hdkd.ops import backends_registry

from harness import DEVICE, ON_GPU

SMOKE = False  # set by conftest.py from --benchmark-disable before the suites are collected

COMPILE_LEVELS = {"ops", "blocks", "models", "train_step", "distill_step"} if ON_GPU else {"blocks"}
DTYPES = ["bfloat16", "float32"] if ON_GPU else ["float32"]
BACKEND_ENV = "HDKD_BENCH_BACKENDS"  # optional comma-separated subset of backends to run


def batch() -> int:
    return 2 if SMOKE else (64 if ON_GPU else 8)


def model_batch() -> int:
    """Batch of the model-level suites (inference, training and distillation steps)."""
    return 2 if SMOKE else (64 if ON_GPU else 4)


def img_size() -> int:
    return 64 if SMOKE else (224 if ON_GPU else 112)


# MBCSA blocks of docs/performance.md (section 2): (cin, cout, input size, downsample)
BLOCKS = [(96, 96, 56, False), (192, 192, 28, False), (64, 96, 112, True)]


def blocks() -> list[tuple[int, int, int, bool]]:
    return [(ci, co, hw // 4 if SMOKE else hw, ds) for ci, co, hw, ds in BLOCKS]


def block_name(cin: int, cout: int, hw: int, ds: bool) -> str:
    return f"{cin}->{cout}@{hw}" + ("->" + str((hw + 1) // 2) if ds else "")


def hidden_shapes() -> list[tuple[int, int]]:
    """(channels, size) of each block's hidden activation: what the fused ops see."""
    return [(ci * 4, (hw + 1) // 2 if ds else hw) for ci, co, hw, ds in blocks()]


def backends_for(ops: tuple[str, ...]) -> list[str]:
    chosen = os.environ.get(BACKEND_ENV)
    wanted = {b.strip() for b in chosen.split(",")} if chosen else None
    names = []
    for name, b in sorted(backends_registry().items()):
        if name == "torch" or b.unavailable_reason() is not None:
            continue
        if DEVICE.type not in b.devices() or not set(ops) <= set(b.ops.implemented()):
            continue
        if name == "triton" and not ON_GPU:
            continue  # the Triton interpreter is a correctness tool: seconds per call
        if wanted is None or name in wanted:
            names.append(name)
    return names


def impls(level: str, ops: tuple[str, ...], first_shape: bool = True) -> list[str]:
    with_compile = level in COMPILE_LEVELS and (first_shape or not SMOKE or level != "blocks")
    return ["eager", *(["compile"] if with_compile else []), *backends_for(ops)]


def model_params(models, level: str, op: str) -> list:
    """(model name, dtype, impl) of each benchmark of a model-level suite whose blocks run `op`."""
    return [pytest.param(name, dtype, impl, id=f"{name}-{dtype}-{impl}")
            for name in models for dtype in DTYPES for impl in impls(level, (op,))]


def compile_note(level: str) -> dict:
    if level in COMPILE_LEVELS:
        return {}
    return {"compile_peer": "not run on the CPU at this level (inductor C++ compile time)"}


def backend_of(impl: str) -> str:
    return "torch" if impl in ("eager", "compile") else impl


def maybe_compile(fn: Callable, impl: str) -> Callable:
    return torch.compile(fn) if impl == "compile" else fn


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def autocast(dtype: str):
    """bf16 runs under autocast with float32 parameters (as the anchors of docs/performance.md)."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(DEVICE.type, dtype=torch_dtype(dtype))


def randomize_bn_stats(module: nn.Module) -> nn.Module:
    """Running statistics off their 0/1 initial values, so eval BN does real arithmetic."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return module


def images(n_sets: int = 2) -> list[torch.Tensor]:
    size = img_size()
    return [torch.randn(model_batch(), 3, size, size, device=DEVICE)
            .contiguous(memory_format=torch.channels_last) for _ in range(n_sets)]


NUM_CLASSES = 4


def make_model(name: str, backend: str, training: bool) -> nn.Module:
    """An hdkd model at this device's image size, channels_last, BN statistics randomised."""
    from hdkd.models import create_model

    torch.manual_seed(0)
    m = create_model(name, num_classes=NUM_CLASSES, img_size=img_size(), backend=backend)
    return randomize_bn_stats(m).to(DEVICE, memory_format=torch.channels_last).train(training)


def forward_flops(model: nn.Module) -> int:
    """fvcore FLOPs of one forward pass of a model-level batch (counted on one image)."""
    size = img_size()
    one = torch.randn(1, 3, size, size, device=DEVICE)
    return model_batch() * flops.count_flops(model, (one,))


def labels(n_sets: int = 2) -> list[torch.Tensor]:
    return [torch.randint(0, NUM_CLASSES, (model_batch(),), device=DEVICE) for _ in range(n_sets)]
