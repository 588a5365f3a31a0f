"""The channel-spatial attention on the extension: fakes and autograd of the ops
<namespace>::channel_spatial_attention_forward / _backward (schemas: csrc/schemas.h), and the
backend's implementation of the op."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ..rules import empty_like_input, empty_plain


def _forward_fake(h, fc1, fc2, sa):
    b, c, hh, ww = h.shape
    return (empty_like_input(h), empty_plain(h, (b, c), torch.float32),
            empty_plain(h, (b, hh, ww), torch.float32))


def _backward_fake(grad, h, fc1, fc2, sa, ca, s):
    return empty_like_input(h), *(empty_plain(w, w.shape) for w in (fc1, fc2, sa))


def _setup(ctx, inputs, output):
    h, fc1, fc2, sa_w = inputs
    _, ca, sa = output
    ctx.mark_non_differentiable(ca, sa)
    ctx.save_for_backward(h, fc1, fc2, sa_w, ca, sa)


def register(namespace: str) -> None:
    """Fakes and autograd of the attention's ops in `namespace`."""
    ops = getattr(torch.ops, namespace)

    def backward(ctx, grad_out, _grad_ca, _grad_sa):
        return ops.channel_spatial_attention_backward(grad_out, *ctx.saved_tensors)

    torch.library.register_fake(f"{namespace}::channel_spatial_attention_forward", _forward_fake)
    torch.library.register_fake(f"{namespace}::channel_spatial_attention_backward",
                                _backward_fake)
    torch.library.register_autograd(f"{namespace}::channel_spatial_attention_forward", backward,
                                    setup_context=_setup)


def channel_spatial_attention(h: Tensor, fc1: Tensor, fc2: Tensor, sa: Tensor) -> Tensor:
    if h.dtype == torch.float64:
        return reference.channel_spatial_attention(h, fc1, fc2, sa)
    return torch.ops.hdkd.channel_spatial_attention_forward(h, fc1, fc2, sa)[0]
