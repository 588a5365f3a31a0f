"""Every custom op of both backends (hdkd::*, hdkd_triton::*) has valid arguments in
tests/op_cases.py, so that tests/test_conformance.py:test_custom_ops_pass_opcheck checks its
contract (torch.library.opcheck: schema, fake kernel against the real outputs' shapes, dtypes and
strides, autograd registration, AOT dispatch); and autocast does not reach the Triton op bodies.
torch.compile relies on the fakes: a fake that promises other strides or another dtype than the
kernel returns breaks inductor's generated code."""
from __future__ import annotations

import pytest
import torch

from ext_env import EXT, EXT_REASON
from op_cases import ext_cases, triton_cases
from triton_env import INTERPRET, _reason as TRITON_REASON


def _registered(namespace: str) -> set:
    return {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
            if name.startswith(f"{namespace}::")}


def _case_names(cases) -> set:
    return {name.split("[")[0] for name, _, _ in cases}


def test_triton_op_list_is_complete():
    """Every hdkd_triton op has a case (a new op must be added to op_cases.triton_cases)."""
    if TRITON_REASON is not None:
        pytest.skip(TRITON_REASON)
    import hdkd.ops.triton  # noqa: F401 (registers the ops)
    assert _registered("hdkd_triton") == _case_names(triton_cases("contiguous"))


def test_ext_op_list_is_complete():
    if EXT is None:
        pytest.skip(EXT_REASON)
    assert _registered("hdkd") == _case_names(ext_cases("contiguous"))


def test_autocast_does_not_reach_triton_op_bodies():
    """The statistics the fakes promise as float32 are float32 under autocast too (the issue's
    reproduction: expand_bn_gelu_forward's mean came back bfloat16)."""
    if TRITON_REASON is not None or not INTERPRET:
        pytest.skip(TRITON_REASON or "CPU autocast case")
    from hdkd.ops.triton.expand_bn_gelu import expand_bn_gelu_forward
    g = torch.Generator().manual_seed(3)
    z, w = torch.randn(2, 4, 5, 6, generator=g), torch.randn(12, 4, 1, 1, generator=g)
    gamma, beta, rm, rv = torch.ones(12), torch.zeros(12), torch.zeros(12), torch.ones(12)
    with torch.autocast("cpu", torch.bfloat16):
        e, mean, rstd, var = expand_bn_gelu_forward(z, w, gamma, beta, rm, rv, True, 1e-5, 1)
    assert mean.dtype == rstd.dtype == var.dtype == torch.float32
    assert e.dtype == z.dtype
    expected = torch.nn.functional.conv2d(z, w).mean((0, 2, 3))
    torch.testing.assert_close(mean, expected, rtol=1e-5, atol=1e-5)
