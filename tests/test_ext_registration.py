"""The extension's ops as torch.library ops: opcheck (schema, fake kernels, autograd
registration, AOT dispatch), torch.compile(fullgraph=True) of hdkd.nn.MBCSA(backend="ext"), the
backend registry entry and the build report."""
from __future__ import annotations

import pytest
import torch

import hdkd
from ext_env import EXT, requires_ext

pytestmark = requires_ext


def _attention_args(b=2, c=20, h=5, w=7, requires_grad=True):
    r = max(c // 16, 1)
    args = [torch.randn(b, c, h, w), torch.randn(r, c, 1, 1) * 0.3, torch.randn(c, r, 1, 1) * 0.3,
            torch.randn(1, 2, 7, 7) * 0.3]
    return [a.requires_grad_(requires_grad) for a in args]


def _opcheck(op, args, kwargs=None):
    # test_autograd_registration, test_faketensor, test_aot_dispatch_dynamic, test_schema
    torch.library.opcheck(op, args, kwargs or {})


@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_csa(channels_last):
    h, fc1, fc2, sa = _attention_args()
    if channels_last:
        h = h.detach().to(memory_format=torch.channels_last).requires_grad_()
    _opcheck(torch.ops.hdkd.channel_spatial_attention_forward.default, (h, fc1, fc2, sa))
    out, ca, s = torch.ops.hdkd.channel_spatial_attention_forward(
        h.detach(), fc1.detach(), fc2.detach(), sa.detach())
    _opcheck(torch.ops.hdkd.channel_spatial_attention_backward.default,
             (torch.randn_like(out), h.detach(), fc1.detach(), fc2.detach(), sa.detach(), ca, s))


def _dw_args(c=13, k=3):
    return (torch.randn(2, c, 6, 5, requires_grad=True),
            (torch.randn(c, 1, k, k) * 0.4).requires_grad_(),
            (torch.rand(c) + 0.5).requires_grad_(), (torch.randn(c) * 0.1).requires_grad_())


def test_opcheck_dwconv_eval_and_train():
    x, w, scale, shift = _dw_args()
    _opcheck(torch.ops.hdkd.dwconv_bn_gelu_eval.default, (x, w, scale, shift))
    _opcheck(torch.ops.hdkd.dwconv_bn_gelu_train.default, (x, w, scale, shift, 1e-5))


@pytest.mark.parametrize("training", [False, True])
def test_opcheck_dwconv_backward(training):
    x, w, gamma, beta = [t.detach() for t in _dw_args()]
    if training:
        y, avg, mx, ties, conv, mean, var = torch.ops.hdkd.dwconv_bn_gelu_train(x, w, gamma,
                                                                                beta, 1e-5)
        invstd = torch.rsqrt(var + 1e-5)
        scale, shift, stats = gamma * invstd, beta - mean * gamma * invstd, (mean, invstd)
    else:
        y, avg, mx, ties = torch.ops.hdkd.dwconv_bn_gelu_eval(x, w, gamma, beta)
        conv, scale, shift, stats = None, gamma, beta, (None, None)
    _opcheck(torch.ops.hdkd.dwconv_bn_gelu_backward.default,
             (torch.randn_like(y), torch.randn_like(avg), torch.randn_like(mx), x, w, conv, scale,
              shift, y, mx, ties, *stats))


@pytest.mark.parametrize("down", [False, True])
def test_opcheck_mbcsa_eval(down):
    block = hdkd.nn.MBCSA(8, 12 if down else 8, downsample=down).eval()
    f = hdkd.ops.reference.fold_mbcsa(block.weights())
    x = torch.randn(2, 8, 7, 6)
    # forward-only op: the ext backend composes differentiable ops when gradients are needed
    _opcheck(torch.ops.hdkd.mbcsa_eval.default, (x, *[t.detach() if t is not None else None
                                                      for t in f]))


@pytest.mark.parametrize("training,compiler", [(False, "inductor"), (True, "aot_eager")],
                         ids=["eval-inductor", "train-aot_eager"])
def test_compile_fullgraph_mbcsa_ext(training, compiler):
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = hdkd.nn.MBCSA(16, 16, backend="ext").train(training)
    ref = hdkd.nn.MBCSA(16, 16, backend="torch").train(training)
    ref.load_state_dict(block.state_dict())
    compiled = torch.compile(block, fullgraph=True, backend=compiler)
    x = torch.randn(2, 16, 6, 5)
    xc, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = compiled(xc), ref(xr)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    out.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(xc.grad, xr.grad, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(block.dw_norm.running_var, ref.dw_norm.running_var)
    with torch.no_grad():  # the fused whole-block op inside a compiled graph
        torch.testing.assert_close(compiled.eval()(x), ref.eval()(x), rtol=1e-4, atol=1e-4)


def test_backend_registered_and_reports_build():
    assert hdkd.backends()["ext"] == "available"
    info = EXT.build_info()
    assert info["torch_version"] == torch.__version__
    assert isinstance(info["cuda"], bool) and info["compiler"]
    assert "cpu" in hdkd.ops.backends_registry()["ext"].devices()
    from hdkd.ops.ext.build import describe_build
    assert describe_build().startswith(f"hdkd._C: built for torch {torch.__version__}")


def test_version_mismatch_is_reported_not_loaded(monkeypatch):
    from hdkd.ops.ext import build
    monkeypatch.setattr(build, "_recorded_torch_version", lambda: "0.0.1")
    with pytest.warns(RuntimeWarning, match="built for torch 0.0.1"):
        module, reason = build.load.__wrapped__()
    assert module is None and "rebuild" in reason


def test_info_prints_the_build():
    import sys

    from helpers import run_outside_checkout
    r = run_outside_checkout([sys.executable, "-m", "hdkd", "info"], timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"hdkd._C: built for torch {torch.__version__}" in r.stdout
    assert "mbcsa_eval -> ext" in r.stdout


@pytest.mark.parametrize("capability,archs,runs", [
    ((9, 0), ["80-real", "90-real", "90-virtual"], True),
    ((8, 6), ["80-real", "90-real"], True),          # sm_80 SASS runs on 8.6
    ((10, 0), ["80-real", "90-real", "90-virtual"], True),  # PTX JIT-compiled by the driver
    ((10, 0), ["80-real", "90-real"], False),
    ((7, 5), ["80-real", "90-real", "90-virtual"], False),
    ((9, 0), ["90a-real"], True),
    ((9, 1), ["90a-real"], False),                    # arch-specific: 9.0 only
])
def test_cuda_kernel_image_decision(capability, archs, runs):
    from hdkd.ops.ext.build import cuda_image_problem

    problem = cuda_image_problem(capability, archs)
    assert (problem is None) == runs
    if not runs:
        assert f"{capability[0]}.{capability[1]}" in problem and "TORCH_CUDA_ARCH_LIST" in problem


def test_ext_backend_leaves_out_a_gpu_it_has_no_kernel_image_for(monkeypatch):
    from hdkd.ops import ext
    from hdkd.ops.ext import devices

    monkeypatch.setattr(devices, "_CUDA_BUILT", True)
    monkeypatch.setattr(devices, "_CUDA_ARCHS", ["80-real", "90-real"])
    monkeypatch.setattr(devices, "_cuda_problem_found", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert devices.devices() == ("cpu",)
    with pytest.raises(hdkd.BackendUnavailableError, match="compute capability 7.5"):
        hdkd.ops.resolve("mbcsa_eval", torch.device("cuda"), "ext")
    assert "CUDA kernels off" in ext._describe()
    monkeypatch.setattr(devices, "_cuda_problem_found", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert devices.devices() == ("cpu", "cuda")
