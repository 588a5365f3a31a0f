"""The custom ops of both backends with valid arguments, one builder per backend, shared by the
contract tests (test_op_contracts.py) and the inference-mode tests (test_inference_mode.py).
Backward ops get the saved tensors their forward returns."""
from __future__ import annotations

import torch

import hdkd
from triton_env import DEVICE


def to_layout(t, layout):
    if t is None or t.dim() != 4 or layout != "channels_last":
        return t
    return t.contiguous(memory_format=torch.channels_last)


def _randn(g, *shape, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).to(DEVICE)


def triton_cases(layout):
    """(name, op, args) for every hdkd_triton op; backward ops get the saved tensors their
    forward returns."""
    from hdkd.ops.triton.channel_spatial_attention import (
        channel_spatial_attention_backward, channel_spatial_attention_forward)
    from hdkd.ops.triton.channel_spatial_attention_project import (
        channel_spatial_attention_project_backward, channel_spatial_attention_project_forward)
    from hdkd.ops.triton.dwconv_bn_gelu import dwconv_bn_gelu_backward, dwconv_bn_gelu_forward
    from hdkd.ops.triton.expand_bn_gelu import expand_bn_gelu_backward, expand_bn_gelu_forward
    from hdkd.ops.triton.mbcsa import mbcsa_eval_op
    g = torch.Generator().manual_seed(0)
    f = lambda t: to_layout(t, layout)  # noqa: E731
    h = f(_randn(g, 2, 12, 5, 4))
    fc1, fc2 = f(_randn(g, 1, 12, 1, 1, scale=0.5)), f(_randn(g, 12, 1, 1, 1, scale=0.5))
    sa = f(_randn(g, 1, 2, 7, 7, scale=0.3))
    dw = f(_randn(g, 12, 1, 3, 3, scale=0.4))
    gamma, beta = _randn(g, 12).abs() + 0.5, _randn(g, 12, scale=0.1)
    rm, rv = _randn(g, 12, scale=0.1), _randn(g, 12).abs() + 0.5
    z, ew = f(_randn(g, 2, 4, 5, 6)), f(_randn(g, 12, 4, 1, 1, scale=0.5))
    pw = f(_randn(g, 5, 12, 1, 1, scale=0.3))
    cases = []

    out = channel_spatial_attention_forward(h, fc1, fc2, sa)
    cases.append(("channel_spatial_attention_forward", channel_spatial_attention_forward,
                  (h, fc1, fc2, sa)))
    cases.append(("channel_spatial_attention_backward", channel_spatial_attention_backward,
                  (torch.randn_like(out[0]), h, fc1, fc2, sa, *out[1:])))
    for training in (True, False):
        args = (h, dw, gamma, beta, rm, rv, training, 1e-5, 1)
        y, avg, mx, ties, mean, rstd, _ = dwconv_bn_gelu_forward(*args)
        cases.append((f"dwconv_bn_gelu_forward[train={training}]", dwconv_bn_gelu_forward, args))
        cases.append((f"dwconv_bn_gelu_backward[train={training}]", dwconv_bn_gelu_backward,
                      (torch.randn_like(y), torch.randn_like(avg), torch.randn_like(mx), h, dw,
                       gamma, beta, y, mx, ties, mean, rstd, training, 1)))
    for training, stride in ((True, 1), (False, 2)):
        args = (z, ew, gamma, beta, rm, rv, training, 1e-5, stride)
        e, mean, rstd, _ = expand_bn_gelu_forward(*args)
        cases.append((f"expand_bn_gelu_forward[train={training}]", expand_bn_gelu_forward, args))
        cases.append((f"expand_bn_gelu_backward[train={training}]", expand_bn_gelu_backward,
                      (torch.randn_like(e), z, ew, gamma, beta, mean, rstd, training, stride)))
    mx = h.amax((2, 3))
    ties = (h == mx[:, :, None, None]).sum((2, 3)).float()
    args = (h, h.mean((2, 3)), mx, ties, fc1, fc2, sa, pw)
    v, *saved = channel_spatial_attention_project_forward(*args)
    cases.append(("channel_spatial_attention_project_forward",
                  channel_spatial_attention_project_forward, args))
    cases.append(("channel_spatial_attention_project_backward",
                  channel_spatial_attention_project_backward,
                  (torch.randn_like(v), h, mx, ties, fc1, fc2, sa, pw, *saved)))
    block = hdkd.nn.MBCSA(4, 6, downsample=True).to(DEVICE).eval()
    if layout == "channels_last":
        block = block.to(memory_format=torch.channels_last)
    with torch.no_grad():
        folded = [f(t) for t in hdkd.ops.reference.fold_mbcsa_float32(block.weights(), 1e-5)]
    cases.append(("mbcsa_eval", mbcsa_eval_op,
                  (f(_randn(g, 2, 4, 7, 6)), *folded)))
    return cases


def ext_cases(layout, spatial: int = 1, ops=None, device="cpu"):
    """(name, op, args) for every op of the extension's schemas, in namespace `ops` (default
    torch.ops.hdkd; the CUDA emulation's has the same ops) on `device`; `spatial` scales the
    images' height and width (large enough images split into several parallel tasks)."""
    g = torch.Generator().manual_seed(1)
    f = lambda t: to_layout(t.to(device), layout)  # noqa: E731
    ops = ops or torch.ops.hdkd
    h = f(torch.randn(2, 20, 5 * spatial, 7 * spatial, generator=g))
    fc1 = f(torch.randn(1, 20, 1, 1, generator=g) * 0.3)
    fc2 = f(torch.randn(20, 1, 1, 1, generator=g) * 0.3)
    sa = f(torch.randn(1, 2, 7, 7, generator=g) * 0.3)
    x = f(torch.randn(2, 13, 6 * spatial, 5 * spatial, generator=g))
    w = f(torch.randn(13, 1, 3, 3, generator=g) * 0.4)
    gamma = (torch.rand(13, generator=g) + 0.5).to(device)
    beta = (torch.randn(13, generator=g) * 0.1).to(device)
    cases = []
    out, ca, s = ops.channel_spatial_attention_forward(h, fc1, fc2, sa)
    cases.append(("channel_spatial_attention_forward", ops.channel_spatial_attention_forward.default,
                  (h, fc1, fc2, sa)))
    cases.append(("channel_spatial_attention_backward",
                  ops.channel_spatial_attention_backward.default,
                  (torch.randn_like(out), h, fc1, fc2, sa, ca, s)))
    y, avg, mx, ties = ops.dwconv_bn_gelu_eval(x, w, gamma, beta)
    cases.append(("dwconv_bn_gelu_eval", ops.dwconv_bn_gelu_eval.default, (x, w, gamma, beta)))
    cases.append(("dwconv_bn_gelu_backward", ops.dwconv_bn_gelu_backward.default,
                  (torch.randn_like(y), torch.randn_like(avg), torch.randn_like(mx), x, w, None,
                   gamma, beta, y, mx, ties, None, None)))
    cases.append(("dwconv_bn_gelu_train", ops.dwconv_bn_gelu_train.default,
                  (x, w, gamma, beta, 1e-5)))
    y, avg, mx, ties, conv, mean, var = ops.dwconv_bn_gelu_train(x, w, gamma, beta, 1e-5)
    invstd = torch.rsqrt(var + 1e-5)
    scale = gamma * invstd
    cases.append(("dwconv_bn_gelu_backward[train]", ops.dwconv_bn_gelu_backward.default,
                  (torch.randn_like(y), torch.randn_like(avg), torch.randn_like(mx), x, w, conv,
                   scale, beta - mean * scale, y, mx, ties, mean, invstd)))
    block = hdkd.nn.MBCSA(8, 12, downsample=True).to(device).eval()
    if layout == "channels_last":
        block = block.to(memory_format=torch.channels_last)
    folded = [None if t is None else f(t.detach())
              for t in hdkd.ops.reference.fold_mbcsa(block.weights())]
    cases.append(("mbcsa_eval", ops.mbcsa_eval.default,
                  (f(torch.randn(2, 8, 7 * spatial, 6 * spatial, generator=g)), *folded)))
    return cases
