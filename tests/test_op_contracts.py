"""Every custom op of both backends (hdkd::*, hdkd_triton::*) keeps its contract whatever the
layout of its inputs and parameters and whatever autocast is around it: torch.library.opcheck
(schema, fake kernel against the real outputs' shapes, dtypes and strides, autograd registration,
AOT dispatch) with contiguous and channels_last tensors, with and without an enclosing
torch.autocast("cpu", bfloat16). torch.compile relies on the fakes: a fake that promises other
strides or another dtype than the kernel returns breaks inductor's generated code."""
from __future__ import annotations

import contextlib

import pytest
import torch

from ext_env import EXT, EXT_REASON
from op_cases import ext_cases, triton_cases
from triton_env import DEVICE, INTERPRET, _reason as TRITON_REASON

LAYOUTS = ["contiguous", "channels_last"]
AUTOCAST = ["no_autocast", "autocast_bf16"]


def _autocast(kind: str, device):
    if kind == "no_autocast":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, torch.bfloat16)


# ------------------------------------------------------------------ hdkd_triton::*

TRITON_OPS = ["csa_forward", "csa_backward", "dwconv_forward[train=True]",
              "dwconv_backward[train=True]", "dwconv_forward[train=False]",
              "dwconv_backward[train=False]", "expand_forward[train=True]",
              "expand_backward[train=True]", "expand_forward[train=False]",
              "expand_backward[train=False]", "csa_project_forward", "csa_project_backward",
              "mbcsa_eval_fused"]


@pytest.mark.skipif(TRITON_REASON is not None, reason=TRITON_REASON or "")
@pytest.mark.parametrize("autocast", AUTOCAST)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", TRITON_OPS)
def test_triton_op_contract(name, layout, autocast):
    cases = dict((n, (op, args)) for n, op, args in triton_cases(layout))
    assert sorted(cases) == sorted(TRITON_OPS)
    op, args = cases[name]
    # inference-only op: opcheck's autograd tests need a differentiable op
    utils = (("test_schema", "test_faketensor") if name == "mbcsa_eval_fused"
             else torch.library._OPCHECK_DEFAULT_UTILS)
    if name.endswith("forward") or "forward[" in name:
        args = tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor)
                     and a.is_floating_point() and a.dim() >= 1 and _differentiable(name, i)
                     else a for i, a in enumerate(args))
    with _autocast(autocast, DEVICE):
        torch.library.opcheck(op, args, test_utils=utils)


def _differentiable(name: str, i: int) -> bool:
    """Which forward inputs carry gradients (running statistics and tie counts do not)."""
    if name.startswith(("dwconv_forward", "expand_forward")):
        return i < 4
    if name == "csa_project_forward":
        return i != 3
    return True


def test_triton_op_list_is_complete():
    """Every hdkd_triton op is in the contract test (a new op must be added above)."""
    if TRITON_REASON is not None:
        pytest.skip(TRITON_REASON)
    from hdkd.ops import triton_backend  # noqa: F401 (registers the ops)
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("hdkd_triton::")}
    tested = {n.split("[")[0] for n in TRITON_OPS}
    assert registered == tested


# ------------------------------------------------------------------ hdkd::* (extension, CPU)

EXT_OPS = ["csa_forward", "csa_backward", "dwconv_bn_gelu_eval", "dwconv_bn_gelu_backward",
           "dwconv_bn_gelu_train", "dwconv_bn_gelu_backward[train]", "mbcsa_eval"]


@pytest.mark.skipif(EXT is None, reason=f"hdkd._C unavailable: {EXT_REASON}")
@pytest.mark.parametrize("autocast", AUTOCAST)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", EXT_OPS)
def test_ext_op_contract(name, layout, autocast):
    cases = {n: (op, args) for n, op, args in ext_cases(layout)}
    assert sorted(cases) == sorted(EXT_OPS)
    op, args = cases[name]
    differentiable = name in ("csa_forward", "dwconv_bn_gelu_eval", "dwconv_bn_gelu_train")
    if differentiable:
        n_grad = 4
        args = tuple(a.detach().requires_grad_() if i < n_grad else a
                     for i, a in enumerate(args))
    utils = (torch.library._OPCHECK_DEFAULT_UTILS if differentiable
             else ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    with _autocast(autocast, "cpu"):
        torch.library.opcheck(op, args, test_utils=utils)


def test_ext_op_list_is_complete():
    if EXT is None:
        pytest.skip(EXT_REASON)
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("hdkd::")}
    assert registered == {n.split("[")[0] for n in EXT_OPS}


def test_autocast_does_not_reach_triton_op_bodies():
    """The statistics the fakes promise as float32 are float32 under autocast too (the issue's
    reproduction: expand_forward's mean came back bfloat16)."""
    if TRITON_REASON is not None or not INTERPRET:
        pytest.skip(TRITON_REASON or "CPU autocast case")
    from hdkd.ops import triton_backend as tb
    g = torch.Generator().manual_seed(3)
    z, w = torch.randn(2, 4, 5, 6, generator=g), torch.randn(12, 4, 1, 1, generator=g)
    gamma, beta, rm, rv = torch.ones(12), torch.zeros(12), torch.zeros(12), torch.ones(12)
    with torch.autocast("cpu", torch.bfloat16):
        e, mean, rstd, var = tb._expand_forward(z, w, gamma, beta, rm, rv, True, 1e-5, 1)
    assert mean.dtype == rstd.dtype == var.dtype == torch.float32
    assert e.dtype == z.dtype
    expected = torch.nn.functional.conv2d(z, w).mean((0, 2, 3))
    torch.testing.assert_close(mean, expected, rtol=1e-5, atol=1e-5)
