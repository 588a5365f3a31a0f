"""Minimal bytes each workload must move through device memory (the bytes floor).

Rule: every input read once, every output written once, in the dtype it is stored in; where
docs/performance.md (section 1) states a workload's count, that count. Parameters count at their
own dtype (float32 under autocast). Gradients: the backward reads the output gradient and
whatever inputs it needs once and writes each input gradient once.
"""
from __future__ import annotations

from torch import nn


def param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def attention_bytes(n: int, itemsize: int, backward: bool) -> tuple[int, str]:
    """n = elements of the hidden tensor h. Forward (docs/performance.md): h read for the pooled
    channel statistics, read again for the per-pixel mean/max, read once more and the output
    written once.
    Backward: read h and the output gradient, write the input gradient."""
    fwd = 4 * n * itemsize
    if not backward:
        return fwd, "3 reads of h + 1 write (docs/performance.md)"
    return fwd + 3 * n * itemsize, "fwd: 3 reads of h + 1 write; bwd: read h, dout; write dh"


def dwconv_bytes(n_in: int, n_out: int, itemsize: int, backward: bool) -> tuple[int, str]:
    fwd = (n_in + n_out) * itemsize
    if not backward:
        return fwd, "read x, write y"
    return fwd + (n_out + 2 * n_in) * itemsize, "fwd: read x, write y; bwd: read dy, x; write dx"


def block_bytes(n_x: int, n_out: int, n_hidden: int, itemsize: int, params: int,
                backward: bool) -> tuple[int, str]:
    """docs/performance.md: read x once, write the output once, write and read the hidden activation
    once; plus the parameters. Backward: the same again with the gradients (read dout and x,
    write dx, hidden written and read once, parameter gradients written)."""
    fwd = (n_x + n_out + 2 * n_hidden) * itemsize + params
    if not backward:
        return fwd, "x + out + 2 x hidden + params (docs/performance.md)"
    bwd = (n_out + 2 * n_x + 2 * n_hidden) * itemsize + params
    return fwd + bwd, "fwd (x + out + 2 hidden + params) + bwd (dout + x + dx + 2 hidden + dparams)"


def inference_bytes(n_images: int, itemsize: int, params: int, n_out: int) -> tuple[int, str]:
    return n_images * itemsize + params + n_out * 4, "images + params + logits (activations free)"


def train_step_bytes(n_images: int, itemsize: int, params: int) -> tuple[int, str]:
    """Forward reads the parameters, backward writes their gradients, AdamW reads parameter,
    gradient and both moments and writes parameter and both moments: 9 x the parameter bytes."""
    return (n_images * itemsize + 9 * params,
            "images + 9 x params (fwd read, grad write, AdamW 4 reads + 3 writes); "
            "activations free")
