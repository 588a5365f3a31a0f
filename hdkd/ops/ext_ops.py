"""torch.library registrations of the extension's ops (schemas in csrc/schemas.h): fake
implementations for torch.compile / FakeTensor, and autograd formulas built on the backward ops.
ext_backend calls register("hdkd") once hdkd._C has loaded; the tests call it for the namespace of
the CPU-emulated CUDA kernels too (tests/cuda_emulation), which share the schemas.

Output layout rule (shared with the kernels): channels_last exactly when the input is
channels_last and not also contiguous; saved-for-backward tensors are float32.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _format(x: Tensor) -> torch.memory_format:
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


def _like(x: Tensor, shape=None) -> Tensor:
    shape = x.shape if shape is None else shape
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=_format(x))


def _new(t: Tensor, shape, dtype=None) -> Tensor:
    return torch.empty(shape, dtype=dtype or t.dtype, device=t.device)


def _channel_spatial_attention_forward_fake(h, fc1, fc2, sa):
    b, c, hh, ww = h.shape
    return _like(h), _new(h, (b, c), torch.float32), _new(h, (b, hh, ww), torch.float32)


def _channel_spatial_attention_backward_fake(grad, h, fc1, fc2, sa, ca, s):
    return _like(h), _new(fc1, fc1.shape), _new(fc2, fc2.shape), _new(sa, sa.shape)


def _dw_stats_fake(x):
    b, c = x.shape[:2]
    return _new(x, (b, c)), _new(x, (b, c)), _new(x, (b, c), torch.float32)


def _dw_eval_fake(x, w, scale, shift):
    return (_like(x), *_dw_stats_fake(x))


def _dw_train_fake(x, w, gamma, beta, eps):
    c = x.shape[1]
    conv = torch.empty(x.shape, dtype=torch.float32, device=x.device,
                       memory_format=torch.channels_last)
    return (_like(x), *_dw_stats_fake(x), conv, _new(x, (c,), torch.float32),
            _new(x, (c,), torch.float32))


def _dw_backward_fake(grad_y, grad_avg, grad_max, x, w, conv, scale, shift, y, mx, ties, mean,
                      invstd):
    return _like(x), _new(w, w.shape), _new(scale, scale.shape), _new(shift, shift.shape)


def _mbcsa_eval_fake(x, expand_w, expand_b, dw_w, dw_b, fc1, fc2, sa, project_w, project_b,
                     shortcut):
    b, _, h, w = x.shape
    if shortcut is not None:
        h, w = (h + 1) // 2, (w + 1) // 2
    return _like(x, (b, project_w.shape[0], h, w))


def _channel_spatial_attention_setup(ctx, inputs, output):
    h, fc1, fc2, sa_w = inputs
    _, ca, sa = output
    ctx.mark_non_differentiable(ca, sa)
    ctx.save_for_backward(h, fc1, fc2, sa_w, ca, sa)


def _dw_eval_setup(ctx, inputs, output):
    x, w, scale, shift = inputs
    y, _, mx, ties = output
    ctx.mark_non_differentiable(ties)
    ctx.save_for_backward(x, w, scale, shift, y, mx, ties)


def _dw_train_setup(ctx, inputs, output):
    x, w, gamma, beta, eps = inputs
    y, _, mx, ties, conv, mean, var = output
    ctx.mark_non_differentiable(ties, conv, mean, var)
    ctx.eps = eps
    ctx.save_for_backward(x, w, gamma, beta, y, mx, ties, conv, mean, var)


def register(namespace: str = "hdkd") -> None:
    """Fake kernels and autograd for the ops of `namespace` (schemas of csrc/schemas.h)."""
    ops = getattr(torch.ops, namespace)

    def channel_spatial_attention_backward(ctx, grad_out, _grad_ca, _grad_sa):
        return ops.channel_spatial_attention_backward(grad_out, *ctx.saved_tensors)

    def dw_eval_backward(ctx, grad_y, grad_avg, grad_max, _grad_ties):
        x, w, scale, shift, y, mx, ties = ctx.saved_tensors
        return ops.dwconv_bn_gelu_backward(grad_y, grad_avg, grad_max, x, w, None, scale, shift,
                                           y, mx, ties, None, None)

    def dw_train_backward(ctx, grad_y, grad_avg, grad_max, _ties, _conv, _mean, _var):
        x, w, gamma, beta, y, mx, ties, conv, mean, var = ctx.saved_tensors
        invstd = torch.rsqrt(var + ctx.eps)
        scale = gamma.float() * invstd
        shift = beta.float() - mean * scale
        dx, dw, dgamma, dbeta = ops.dwconv_bn_gelu_backward(grad_y, grad_avg, grad_max, x, w,
                                                            conv, scale, shift, y, mx, ties,
                                                            mean, invstd)
        return dx, dw, dgamma.to(gamma.dtype), dbeta.to(beta.dtype), None

    fakes = {"channel_spatial_attention_forward": _channel_spatial_attention_forward_fake, "channel_spatial_attention_backward": _channel_spatial_attention_backward_fake,
             "dwconv_bn_gelu_eval": _dw_eval_fake, "dwconv_bn_gelu_train": _dw_train_fake,
             "dwconv_bn_gelu_backward": _dw_backward_fake, "mbcsa_eval": _mbcsa_eval_fake}
    for name, fake in fakes.items():
        torch.library.register_fake(f"{namespace}::{name}", fake)
    torch.library.register_autograd(f"{namespace}::channel_spatial_attention_forward", channel_spatial_attention_backward,
                                    setup_context=_channel_spatial_attention_setup)
    torch.library.register_autograd(f"{namespace}::dwconv_bn_gelu_eval", dw_eval_backward,
                                    setup_context=_dw_eval_setup)
    torch.library.register_autograd(f"{namespace}::dwconv_bn_gelu_train", dw_train_backward,
                                    setup_context=_dw_train_setup)
