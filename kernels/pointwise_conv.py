"""1x1 convolutions as tl.dot GEMMs with fused prologues and epilogues (the MBCSA eval path).

out[b, n, p] = epilogue(sum_k A[b, p, k] * weight[n, k] + bias[n]) where
  A is the input sampled at every STRIDE-th pixel (the strided expand conv), optionally gated
    while it is loaded: A = h * (ca[b, k] * sa[b, p] + 1), which is the attention's output
    u * sa + h, so the attention result never goes to memory;
  the epilogue is GELU (expand), GELU'(.) * G for a given gradient G (the expand's backward,
    recomputing its pre-activation instead of storing it), or adds the block's shortcut
    (project): the input itself (identity) or MaxPool(3, 2, 1)(x) @ shortcut_weight^T, a second
    GEMM whose loader pools.
One program computes a [BLOCK_M pixels, BLOCK_N outputs] tile of one image, K in BLOCK_K steps,
with fp32 accumulation; tiles are converted to bf16/fp16 for the tensor cores (fp32 inputs use
the IEEE path so float32 results match the reference to 1e-5).
"""
from __future__ import annotations

import triton
import triton.language as tl

from hdkd.ops.rules import empty_like_input

from ._config import configs, dot_dtype, strides
from ._math import gelu, gelu_grad, tile

_NEG_INF = tl.constexpr(float("-inf"))
RES_NONE, RES_IDENTITY, RES_POOL_GEMM = 0, 1, 2
EPI_NONE, EPI_GELU, EPI_GELU_GRAD = 0, 1, 2


@triton.jit
def _mma(a, w, acc, DOT_DTYPE: tl.constexpr):
    """acc + a @ w on the tensor cores in DOT_DTYPE (float32: the exact IEEE path, not TF32)."""
    if DOT_DTYPE == tl.float32:
        acc = tl.dot(a.to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision="ieee")
    else:
        acc = tl.dot(a.to(DOT_DTYPE), w.to(DOT_DTYPE), acc)
    return acc


@triton.autotune(
    # candidates chosen from the sm_90 compile (tests/triton_compile_check.py): the fp32 tile,
    # the gated loader and the GELU epilogue spill at 128 x 128 or with 4 warps
    configs(gpu=[dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=8),
                 dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=8),
                 dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4)],
            interpret=dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16), stages=(3, 4)),
    key=["K", "N", "HWo", "GATED", "EPILOGUE", "RESIDUAL"])
@triton.jit
def _pointwise_kernel(a_ptr, w_ptr, bias_ptr, out_ptr, ca_ptr, s_ptr, x_ptr, scw_ptr,
                      K, N, Wo, HWo, Hx, Wx, CX,
                      stride_a_b, stride_a_c, stride_a_y, stride_a_x,
                      stride_out_b, stride_out_c, stride_out_y, stride_out_x,
                      stride_x_b, stride_x_c, stride_x_y, stride_x_x,
                      IN_STRIDE: tl.constexpr, GATED: tl.constexpr,
                      EPILOGUE: tl.constexpr, RESIDUAL: tl.constexpr,
                      DOT_DTYPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    b, offs_m, offs_n, mmask, nmask = tile(HWo, N, BLOCK_M, BLOCK_N)
    py = offs_m // Wo
    px = offs_m % Wo
    a_rows = a_ptr + b * stride_a_b + (py * IN_STRIDE * stride_a_y
                                       + px * IN_STRIDE * stride_a_x)[:, None]
    if GATED:
        s = tl.load(s_ptr + b * HWo + offs_m, mask=mmask, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < K
        a = tl.load(a_rows + offs_k[None, :] * stride_a_c, mask=mmask[:, None] & kmask[None, :],
                    other=0.0)
        if GATED:
            ca = tl.load(ca_ptr + b * K + offs_k, mask=kmask, other=0.0)
            a = a.to(tl.float32) * (ca[None, :] * s[:, None] + 1.0)
        w = tl.load(w_ptr + offs_n[None, :] * K + offs_k[:, None],
                    mask=kmask[:, None] & nmask[None, :], other=0.0)
        acc = _mma(a, w, acc, DOT_DTYPE)
    acc += tl.load(bias_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    omask = mmask[:, None] & nmask[None, :]
    if EPILOGUE == 1:
        acc = gelu(acc)
    if EPILOGUE == 2:  # x_ptr holds the gradient at the output
        g = tl.load(x_ptr + b * stride_x_b + (py * stride_x_y + px * stride_x_x)[:, None]
                    + offs_n[None, :] * stride_x_c, mask=omask, other=0.0)
        acc = gelu_grad(acc) * g.to(tl.float32)
    if RESIDUAL == 1:
        r = tl.load(x_ptr + b * stride_x_b + (py * stride_x_y + px * stride_x_x)[:, None]
                    + offs_n[None, :] * stride_x_c, mask=omask, other=0.0)
        acc += r.to(tl.float32)
    if RESIDUAL == 2:  # 16-channel steps: nine pooled loads per step stay in registers
        for k0 in range(0, CX, 16):
            offs_k = k0 + tl.arange(0, 16)
            kmask = offs_k < CX
            lmask = mmask[:, None] & kmask[None, :]
            pooled = tl.full([BLOCK_M, 16], _NEG_INF, tl.float32)
            for dy in tl.static_range(3):
                iy = py * 2 + dy - 1
                for dx in tl.static_range(3):
                    ix = px * 2 + dx - 1
                    ok = (iy >= 0) & (iy < Hx) & (ix >= 0) & (ix < Wx)
                    v = tl.load(x_ptr + b * stride_x_b
                                + (iy * stride_x_y + ix * stride_x_x)[:, None]
                                + offs_k[None, :] * stride_x_c,
                                mask=lmask & ok[:, None], other=_NEG_INF)
                    pooled = tl.maximum(pooled, v.to(tl.float32),  # NaN as max_pool2d
                                        propagate_nan=tl.PropagateNan.ALL)
            pooled = tl.where(lmask, pooled, 0.0)
            w = tl.load(scw_ptr + offs_n[None, :] * CX + offs_k[:, None],
                        mask=kmask[:, None] & nmask[None, :], other=0.0)
            acc = _mma(pooled, w, acc, DOT_DTYPE)
    tl.store(out_ptr + b * stride_out_b + (py * stride_out_y + px * stride_out_x)[:, None]
             + offs_n[None, :] * stride_out_c, acc.to(out_ptr.dtype.element_ty), mask=omask)


def pointwise_conv(a, weight, bias, out_hw, *, in_stride=1, gelu_out=False, gate=None,
                   residual=None, shortcut_weight=None, gelu_grad_of=None, out=None):
    """out = epilogue(conv1x1(a, weight, bias)) as described above.

    a: B x K x H x W (any strides); weight: N x K (x 1 x 1); bias: N; gate: (ca B x K, sa B x HWo)
    float32 or None; residual: the block input x for the shortcut (identity when shortcut_weight
    is None, else MaxPool(3,2,1) then shortcut_weight N x Cx); gelu_grad_of: G (B x N x Ho x Wo),
    the output is then GELU'(conv) * G. The output takes a's memory format unless `out` is given.
    """
    B, K = a.shape[:2]
    Ho, Wo = out_hw
    N = weight.shape[0]
    w = weight.reshape(N, K).to(a.dtype).contiguous()
    if out is None:
        out = empty_like_input(a, (B, N, Ho, Wo))
    ca, s = gate if gate is not None else (bias, bias)
    epilogue = EPI_GELU if gelu_out else EPI_NONE
    if gelu_grad_of is not None:
        epilogue, mode, x, scw = EPI_GELU_GRAD, RES_NONE, gelu_grad_of, w
    elif residual is None:
        mode, x, scw = RES_NONE, a, w
    elif shortcut_weight is None:
        mode, x, scw = RES_IDENTITY, residual, w
    else:
        mode, x = RES_POOL_GEMM, residual
        scw = shortcut_weight.reshape(N, -1).to(a.dtype).contiguous()
    grid = lambda meta: (B, triton.cdiv(Ho * Wo, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]))
    _pointwise_kernel[grid](
        a_ptr=a, w_ptr=w, bias_ptr=bias, out_ptr=out, ca_ptr=ca, s_ptr=s, x_ptr=x, scw_ptr=scw,
        K=K, N=N, Wo=Wo, HWo=Ho * Wo, Hx=x.shape[2], Wx=x.shape[3], CX=x.shape[1],
        **strides("a", a), **strides("out", out), **strides("x", x),
        IN_STRIDE=in_stride, GATED=gate is not None, EPILOGUE=epilogue, RESIDUAL=mode,
        DOT_DTYPE=dot_dtype(a.dtype))
    return out
