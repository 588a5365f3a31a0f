"""The `ext` backend: the compiled extension hdkd._C (csrc/), one module per op, and the
registry entry.

CPU: fused float32 kernels for every op (bfloat16/float16 computed in float32). CUDA (when the .so
has CUDA and a GPU is visible): kernels for every op (csrc/cuda, float32 math, the 1x1 convs of the
fused eval block on cuBLAS). float64 and depthwise kernels larger than 7x7 run the reference.

mbcsa_eval runs the whole-block kernel when no gradient is needed; with gradients it is composed
of the fused depthwise and attention ops (which have autograd) and ATen 1x1 convs. mbcsa_train
is composed the same way, with BN batch statistics and running-statistics updates.
"""
from __future__ import annotations

from ..backends import Backend, register_backend
from ..contract import BackendOps
from . import channel_spatial_attention, devices, dwconv_bn_gelu, mbcsa
from .build import describe_build, load


def register(namespace: str) -> None:
    """Fakes and autograd of the ops of `namespace` (schemas of csrc/schemas.h): "hdkd" once
    hdkd._C has loaded; the tests' CPU-emulated CUDA kernels (tests/cuda_emulation) share the
    schemas under their own namespace."""
    for op in (channel_spatial_attention, dwconv_bn_gelu, mbcsa):
        op.register(namespace)


_module, _reason = load()
if _module is not None:
    register("hdkd")


def _describe() -> str:
    problem = devices.cuda_problem()
    cuda = "; CUDA: kernels for every op" if problem is None else f"; CUDA kernels off: {problem}"
    return describe_build().removeprefix("hdkd._C: ") + cuda


register_backend(Backend(
    name="ext", devices=devices.devices,
    ops=BackendOps(
        channel_spatial_attention=channel_spatial_attention.channel_spatial_attention,
        dwconv_bn_gelu=dwconv_bn_gelu.dwconv_bn_gelu, mbcsa_train=mbcsa.mbcsa_train,
        mbcsa_eval=mbcsa.mbcsa_eval),
    unavailable_reason=lambda: _reason, describe=_describe,
    device_problem=lambda kind: devices.cuda_problem() if kind == "cuda" else None,
    prepare_folded=mbcsa.prepare_folded))
