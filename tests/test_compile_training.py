"""An inductor-compiled training step (not only aot_eager) of a channels_last MBCSA and of a whole
small HDKD student, on backends ext and triton (the interpreter on the CPU), with and without
torch.autocast("cpu", bfloat16), against the eager reference (backend "torch"): outputs, input
and parameter gradients and every BN running statistic. This is the path of
`hdkd train --channels-last --compile [--amp bf16]`."""
from __future__ import annotations

import contextlib

import pytest
import torch

import hdkd
from ext_env import EXT, EXT_REASON
from helpers import rel_err
from triton_env import DEVICE, _reason as TRITON_REASON

BACKENDS = [
    pytest.param("ext", marks=pytest.mark.skipif(EXT is None, reason=f"hdkd._C: {EXT_REASON}")),
    pytest.param("triton", marks=pytest.mark.skipif(TRITON_REASON is not None,
                                                    reason=TRITON_REASON or "")),
]


def _block(backend):
    return hdkd.nn.MBCSA(16, 16, backend=backend)


def _student(backend):
    return hdkd.models.HDKDStudent(num_classes=3, img_size=32, depths=(1, 1, 1),
                                   widths=(8, 12, 16), dim=16, depth=1, heads=2, head_dim=8,
                                   backend=backend)


def _input(what, g):
    shape = (2, 16, 7, 7) if what == "block" else (2, 3, 32, 32)
    return torch.randn(*shape, generator=g).to(DEVICE).contiguous(memory_format=torch.channels_last)


def _step(model, x, amp):
    """One training forward and backward; (output, input gradient)."""
    x = x.clone().requires_grad_()
    ctx = torch.autocast("cpu", torch.bfloat16) if amp else contextlib.nullcontext()
    with ctx:
        out = model(x)
    if isinstance(out, tuple):  # the distilled student's (class, distillation) heads in training
        out = torch.cat(out, 1)
    (out.float().square().mean()).backward()
    return out.detach().float(), x.grad


@pytest.fixture(autouse=True)
def fresh_compile():
    """Compile from scratch: inductor's on-disk caches can hand back a graph compiled against an
    earlier version of a fake kernel, which hides exactly the defects this file is for."""
    torch._dynamo.reset()
    with torch._inductor.config.patch(force_disable_caches=True):
        yield


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "autocast_bf16"])
@pytest.mark.parametrize("what", ["block", "student"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_inductor_training_step_matches_eager_reference(backend, what, amp):
    torch.manual_seed(0)
    make = _block if what == "block" else _student
    model = make(backend).to(DEVICE).to(memory_format=torch.channels_last).train()
    ref = make("torch").to(DEVICE).to(memory_format=torch.channels_last).train()
    ref.load_state_dict(model.state_dict())
    x = _input(what, torch.Generator().manual_seed(1))

    out, dx = _step(torch.compile(model, backend="inductor"), x, amp)
    ref_out, ref_dx = _step(ref, x, amp)

    # float32: the kernels' own rounding; bfloat16: the two paths round at different places
    tol = 2e-2 if amp else 1e-4
    assert rel_err(out, ref_out) < tol
    assert rel_err(dx, ref_dx) < 10 * tol
    ref_grads = {name: p.grad for name, p in ref.named_parameters()}
    # Some gradients are zero up to rounding (a BN bias followed by a conv and a training BN):
    # each is measured against 1% of the largest reference gradient, not against its own noise.
    floor = 0.01 * max(g.norm() for g in ref_grads.values())
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        err = (p.grad.float() - ref_grads[name].float()).norm()
        assert err <= 10 * tol * max(ref_grads[name].norm(), floor), name
    buffers = dict(ref.named_buffers())
    for name, b in model.named_buffers():  # running means can be zero up to rounding as well
        torch.testing.assert_close(b, buffers[name], rtol=tol, atol=tol, msg=name)
