"""FLOP counting in fvcore's convention (one multiply-add = one FLOP).

fvcore traces the model with torch.jit and counts convolutions, matrix products and norms; it
counts an op it does not know as zero. hdkd's fused ops (torch.ops.hdkd.*, Triton ops registered
with torch.library) are therefore given handles here that return exactly what fvcore counts for the
reference computation of the same op (hdkd.ops.reference), so a fused path reports the same FLOPs
as the reference. Each forward custom op is mapped to its formula explicitly by the op table
(hdkd/ops/op_table.py: CUSTOM_OP_FLOPS, by the op's name in any namespace starting with "hdkd"),
for every op registered at the time of counting; a registered forward op the table does not list
is an error, not a silent zero or another op's formula.

Conventions per reference op (fvcore's own rules): conv = N * Cout * Cin/groups * k*k * Hout*Wout;
linear = rows * in * out; batch norm = 2 per element in eval, 5 per element in training (with
affine); activations, pooling, elementwise arithmetic and reductions = 0.
scaled_dot_product_attention, which fvcore leaves at zero, is counted as its two matrix products (q
k^T and attn v).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from .ops.op_table import CUSTOM_OP_FLOPS, FlopRule

Handle = Callable[[list, list], int]

# ------------------------------------------------------------------ reference formulas


def batch_norm_flops(numel: int, training: bool) -> int:
    return numel * (5 if training else 2)


def channel_spatial_attention_flops(b: int, c: int, h: int, w: int, reduced: int,
                                    sa_kernel: int = 7) -> int:
    """The channel MLP (two linears) on both pooled vectors, and the 2 -> 1 spatial conv."""
    return 4 * b * c * reduced + 2 * b * sa_kernel * sa_kernel * h * w


def dwconv_bn_gelu_flops(b: int, c: int, h_out: int, w_out: int, k: int, training: bool) -> int:
    n = b * c * h_out * w_out
    return n * k * k + batch_norm_flops(n, training)


def mbcsa_flops(b: int, cin: int, cout: int, h: int, w: int, h_out: int, w_out: int, hidden: int,
                k: int, training: bool, attention: bool = True, reduced: Optional[int] = None,
                sa_kernel: int = 7) -> int:
    """One MBCSA block; expansion 1 (hidden == cin, no expand conv, no attention) included."""
    out_px = b * h_out * w_out
    flops = batch_norm_flops(b * cin * h * w, training)                    # pre-norm
    if hidden != cin:
        flops += out_px * hidden * cin + batch_norm_flops(out_px * hidden, training)  # expand
    flops += dwconv_bn_gelu_flops(b, hidden, h_out, w_out, k, training)
    if attention:
        r = reduced if reduced is not None else max(hidden // 16, 1)
        flops += channel_spatial_attention_flops(b, hidden, h_out, w_out, r, sa_kernel)
    flops += out_px * cout * hidden + batch_norm_flops(out_px * cout, training)  # project
    if (h_out, w_out) != (h, w):
        flops += out_px * cout * cin                                           # shortcut conv
    return flops


# ------------------------------------------------------------------ handles for custom ops


def _shape(value: Any) -> Optional[list[int]]:
    return list(value.type().sizes()) if value.isCompleteTensor() else None


def _bool_arg(inputs: list) -> Optional[bool]:
    for v in inputs:
        if isinstance(v.type(), torch._C.BoolType):
            try:
                ival = v.toIValue()
            except RuntimeError:
                continue
            if isinstance(ival, bool):
                return ival
    return None


def _training(rule: FlopRule, inputs: list) -> bool:
    if rule.training is not None:
        return rule.training
    return bool(_bool_arg(inputs))


def _weights(inputs: list) -> list[list[int]]:
    """Shapes of the rank-4 tensor arguments after the first (the activation), looking into
    Tensor[] arguments."""
    values = []
    for v in inputs[1:]:
        if v.node().kind() == "prim::ListConstruct":
            values.extend(v.node().inputs())
        else:
            values.append(v)
    shapes = [_shape(v) for v in values]
    return [s for s in shapes if s is not None and len(s) == 4]


def _channel_spatial_attention_handle(rule: FlopRule, project: bool = False) -> Handle:
    """The attention; with project, followed by the 1x1 project conv (its output is the op's
    first output)."""
    def handle(inputs: list, outputs: list) -> int:
        b, c, h, w = _shape(inputs[0])
        reduced, sa_k = max(c // 16, 1), 7
        for s in _weights(inputs):
            if s[0] == 1 and s[1] == 2:
                sa_k = s[2]
            elif s[0] == c and s[1] != c and s[2:] == [1, 1]:  # fc2: C x reduced x 1 x 1
                reduced = s[1]
        flops = channel_spatial_attention_flops(b, c, h, w, reduced, sa_k)
        if project:
            flops += b * _shape(outputs[0])[1] * c * h * w
        return flops
    return handle


def _channel_spatial_attention_project_handle(rule: FlopRule) -> Handle:
    return _channel_spatial_attention_handle(rule, project=True)


def _expand_handle(rule: FlopRule) -> Handle:
    """1x1 conv (possibly strided) -> BN -> GELU."""
    def handle(inputs: list, outputs: list) -> int:
        cin = _shape(inputs[0])[1]
        b, c, h, w = _shape(outputs[0])
        n = b * c * h * w
        return n * cin + batch_norm_flops(n, _training(rule, inputs))
    return handle


def _dwconv_handle(rule: FlopRule) -> Handle:
    def handle(inputs: list, outputs: list) -> int:
        b, c, h, w = _shape(outputs[0])
        k = next((s[2] for s in _weights(inputs) if s[0] == c and s[1] == 1), 3)
        return dwconv_bn_gelu_flops(b, c, h, w, k, _training(rule, inputs))
    return handle


def _mbcsa_handle(rule: FlopRule) -> Handle:
    def handle(inputs: list, outputs: list) -> int:
        b, cin, h, w = _shape(inputs[0])
        _, cout, h_out, w_out = _shape(outputs[0])
        weights = _weights(inputs)
        dw = next(s for s in weights if s[1] == 1 and s[2] == s[3] and s[2] > 1)
        hidden, k = dw[0], dw[2]
        sa = next((s for s in weights if s[0] == 1 and s[1] == 2), None)
        # fc1 is (reduced, hidden, 1, 1), project is (cout, hidden, 1, 1): when no other shape of
        # that form exists, reduced == cout.
        reduced = next((s[0] for s in weights if s[1:] == [hidden, 1, 1] and s[0] != cout), cout)
        return mbcsa_flops(b, cin, cout, h, w, h_out, w_out, hidden, k,
                           _training(rule, inputs), attention=sa is not None,
                           reduced=reduced, sa_kernel=sa[2] if sa else 7)
    return handle


# The op table's formula names (FlopRule.formula) -> handle factory.
FORMULAS: dict[str, Callable[[FlopRule], Handle]] = {
    "mbcsa": _mbcsa_handle,
    "dwconv_bn_gelu": _dwconv_handle,
    "channel_spatial_attention": _channel_spatial_attention_handle,
    "channel_spatial_attention_project": _channel_spatial_attention_project_handle,
    "expand_bn_gelu": _expand_handle,
}
_unknown = {r.formula for r in CUSTOM_OP_FLOPS.values()} - {*FORMULAS, None}
if _unknown:
    raise ImportError(f"hdkd/ops/op_table.py names FLOP formulas hdkd.flops lacks: {_unknown}")


def _sdpa_flops(inputs: list, outputs: list) -> int:
    q, k = _shape(inputs[0]), _shape(inputs[1])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + k[-1])


def _matmul_flops(inputs: list, outputs: list) -> int:
    """fvcore's matmul rule, extended to matrix-vector products (fvcore asserts on those; BN
    folding does one)."""
    a, b = _shape(inputs[0]), _shape(inputs[1])
    if len(b) == 1:
        return math.prod(a)
    if len(a) == 1:
        return math.prod(b)
    return math.prod(a) * b[-1]


def custom_op_handles(namespaces: Sequence[str] = ("hdkd",)) -> dict[str, Handle]:
    """fvcore handles for every registered op whose namespace starts with one of `namespaces`
    (forward ops only: a backward op, named *_backward, never appears in a forward trace), from
    the op table's CUSTOM_OP_FLOPS, plus attention. LookupError for a forward op the table does
    not list."""
    handles: dict[str, Handle] = {"aten::scaled_dot_product_attention": _sdpa_flops,
                                  "aten::matmul": _matmul_flops}
    for op in torch._C._dispatch_get_all_op_names():
        ns, _, name = op.partition("::")
        if not ns.startswith(tuple(namespaces)):
            continue
        base = name.split(".")[0]
        if base.endswith("_backward"):
            continue
        rule = CUSTOM_OP_FLOPS.get(base)
        if rule is None:
            raise LookupError(f"{op} has no FLOP formula: list it with its op in "
                              f"hdkd/ops/op_table.py (FlopRule)")
        if rule.formula is not None:
            handles[op] = FORMULAS[rule.formula](rule)
    return handles


# ------------------------------------------------------------------ counting


class _Call(nn.Module):
    """Wrap a function so fvcore can trace it."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def flop_analysis(model: nn.Module | Callable, inputs: tuple,
                  namespaces: Sequence[str] = ("hdkd",)):
    """fvcore FlopCountAnalysis of model(*inputs) with hdkd's handles, quiet about skipped ops."""
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError as e:  # fvcore is an optional dependency (benchmarks, `hdkd flops`)
        raise ImportError("hdkd.flops needs fvcore: pip install fvcore") from e
    module = model if isinstance(model, nn.Module) else _Call(model)
    analysis = FlopCountAnalysis(module, inputs).set_op_handle(**custom_op_handles(namespaces))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


def count_flops(model: nn.Module | Callable, inputs: tuple,
                namespaces: Sequence[str] = ("hdkd",)) -> int:
    """Total forward FLOPs (fvcore convention) of model(*inputs)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return int(flop_analysis(model, inputs, namespaces).total())


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def stage_table(model: nn.Module, inputs: tuple) -> list[tuple[str, int, int]]:
    """(name, parameters, forward FLOPs) per top-level child in execution order, then "total".
    Children without FLOPs of their own (e.g. a head split over several children) are kept."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        analysis = flop_analysis(model, inputs)
        by_module = analysis.by_module()
        total = int(analysis.total())
    rows = [(name, parameter_count(child), int(by_module.get(name, 0)))
            for name, child in model.named_children()]
    own = parameter_count(model) - sum(r[1] for r in rows)
    counted = sum(r[2] for r in rows)
    if own or total != counted:
        rows.append(("(top level)", own, total - counted))
    rows.append(("total", parameter_count(model), total))
    return rows
