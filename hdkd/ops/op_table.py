"""The op table: every public op once, with what the side tables derive from it.

Per op: its registry name (a field of hdkd.ops.contract.BackendOps), the workload names auto's
measurements use (hdkd/ops/measured_backends.json, benchmarks/choose_backends.py), and the forward
custom ops that compute it in any backend's namespace (hdkd::, hdkd_triton::, the tests'
hdkd_cuda_emu::), each with the reference formula hdkd.flops counts it as. Derived here:
OP_NAMES (`hdkd info`, the tests' registration lists), WORKLOADS (hdkd.ops.measured) and
CUSTOM_OP_FLOPS (hdkd.flops). Backward custom ops (named *_backward) never appear in a forward
trace and are not listed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class FlopRule:
    """formula: a key of hdkd.flops.FORMULAS, or None for an op of element-wise work only (0 FLOPs
    in fvcore's convention: no handle); training: the BN mode the op runs in, or None when the op
    takes it as its bool argument."""

    formula: Optional[str]
    training: Optional[bool] = None


@dataclass(frozen=True)
class OpSpec:
    name: str
    workloads: tuple[str, ...]
    custom_ops: tuple[tuple[str, FlopRule], ...]


OPS = (
    OpSpec("channel_spatial_attention", workloads=("channel_spatial_attention",),
           custom_ops=(("channel_spatial_attention_forward",
                        FlopRule("channel_spatial_attention")),)),
    OpSpec("dwconv_bn_gelu", workloads=("dwconv_bn_gelu_eval", "dwconv_bn_gelu_train"),
           custom_ops=(("dwconv_bn_gelu_forward", FlopRule("dwconv_bn_gelu")),
                       ("dwconv_bn_gelu_eval", FlopRule("dwconv_bn_gelu", training=False)),
                       ("dwconv_bn_gelu_train", FlopRule("dwconv_bn_gelu", training=True)))),
    # the Triton stages of the composed block (train, and eval with gradients)
    OpSpec("mbcsa_train", workloads=("mbcsa_train",),
           custom_ops=(("expand_bn_gelu_forward", FlopRule("expand_bn_gelu")),
                       ("channel_spatial_attention_project_forward",
                        FlopRule("channel_spatial_attention_project")))),
    OpSpec("mbcsa_eval", workloads=("mbcsa_eval",),
           custom_ops=(("mbcsa_eval", FlopRule("mbcsa", training=False)),)),
)

OP_NAMES = tuple(spec.name for spec in OPS)
# measured workload -> the op that runs it
WORKLOADS = {workload: spec.name for spec in OPS for workload in spec.workloads}
# forward custom op name (without namespace) -> how hdkd.flops counts it
CUSTOM_OP_FLOPS = {name: rule for spec in OPS for name, rule in spec.custom_ops}


def check_op(op: str) -> str:
    """op when it names a public op, else ValueError (a misspelt name never silently misses)."""
    if op not in OP_NAMES:
        raise ValueError(f"unknown hdkd op {op!r}; expected one of: {', '.join(OP_NAMES)}")
    return op
