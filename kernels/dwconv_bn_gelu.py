"""Depthwise k x k conv + BN + GELU that also emits the per-channel average and max of its output.

y = GELU(conv(x) * scale + shift), per channel: eval folds BN into (scale, shift); train first
runs a statistics pass over the conv output (tile mean and M2, combined with Chan's formula on
the host) and then the output pass, recomputing the 9-tap conv rather than storing it.

Every kernel works on [pixels, channels] tiles of one image with any input strides; per-tile
partial reductions are written to small float32 buffers (rows = tiles) and summed on the host,
which keeps the result deterministic. The tile shape is fixed per process (the partial buffers
depend on it); autotuning picks num_warps.

Backward, with dy = gy + gavg / HW + gmax * [y == max] / ties and da = dy * GELU'(a):
  R. partial sums of da and da * xhat per channel (dbeta, dgamma),
  V. dv = d(conv output) (train: through the batch mean and variance) -> a channels-last
     buffer in x's dtype (float32 accumulation everywhere else), with
     the per-tap partials of d(weight) = sum dv * x(shifted),
  X. dx = transposed depthwise conv of dv.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from hdkd.ops.rules import conv_out_hw, empty_like_input

from ._config import INTERPRET, configs, strides
from ._math import add_max_ties, gelu, gelu_grad, pixel_offsets, reduce_max_ties, tile

_NEG_INF = tl.constexpr(float("-inf"))
# [pixels, channels] tile: 64 x 64 bf16 channels_last rows are 128-byte lines on the GPU
TILE_P, TILE_C = (32, 16) if INTERPRET else (64, 64)
# d(weight) pass: 32-pixel tiles (64 spill at 8 warps on sm_90), DW_TILES of them per program
DW_TILE_P, DW_TILES = (32, 2) if INTERPRET else (32, 8)
# forward pass: OUT_TILES pixel tiles per program, so the tile statistics' cross-thread reduction
# (more instructions than the conv in the SASS) runs once per OUT_TILES tiles
OUT_TILES = 2 if INTERPRET else 4
_WARPS = configs(gpu=[{}], interpret={}, warps=(8, 4))


@triton.jit
def _conv_tile(x_ptr, w_ptr, b, offs_p, offs_c, pmask, cmask, C, H, W, Wo,
               stride_x_b, stride_x_c, stride_x_y, stride_x_x, STRIDE: tl.constexpr,
               K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """The depthwise conv at output pixels offs_p, channels offs_c (float32, zero padding);
    w_ptr: the weights tap-major (K*K x C, see _taps)."""
    oh = offs_p // Wo
    ow = offs_p % Wo
    base = x_ptr + b * stride_x_b + offs_c[None, :] * stride_x_c
    acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for ky in tl.static_range(K):
        ih = oh * STRIDE + (ky - K // 2)
        for kx in tl.static_range(K):
            iw = ow * STRIDE + (kx - K // 2)
            ok = pmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            xv = tl.load(base + (ih * stride_x_y + iw * stride_x_x)[:, None],
                         mask=ok[:, None] & cmask[None, :], other=0.0)
            wv = tl.load(w_ptr + (ky * K + kx) * C + offs_c, mask=cmask, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    return acc


@triton.autotune(_WARPS, key=["C", "HWo"])
@triton.jit
def _batch_stats_kernel(x_ptr, w_ptr, psum_ptr, pm2_ptr, C, H, W, Wo, HWo,
                        stride_x_b, stride_x_c, stride_x_y, stride_x_x, STRIDE: tl.constexpr,
                        K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per-tile sum and sum of squared deviations from the tile mean of the conv output."""
    b, offs_p, offs_c, pmask, cmask = tile(HWo, C, BLOCK_P, BLOCK_C)
    row = b * tl.num_programs(1) + tl.program_id(1)
    acc = _conv_tile(x_ptr, w_ptr, b, offs_p, offs_c, pmask, cmask, C, H, W, Wo,
                     stride_x_b, stride_x_c, stride_x_y, stride_x_x, STRIDE, K, BLOCK_P, BLOCK_C)
    m = pmask[:, None] & cmask[None, :]
    n = tl.sum(pmask.to(tl.float32), 0)
    tsum = tl.sum(tl.where(m, acc, 0.0), 0)
    dev = tl.where(m, acc - (tsum / n)[None, :], 0.0)
    tl.store(psum_ptr + row * C + offs_c, tsum, mask=cmask)
    tl.store(pm2_ptr + row * C + offs_c, tl.sum(dev * dev, 0), mask=cmask)


@triton.autotune(_WARPS, key=["C", "HWo"])
@triton.jit
def _output_kernel(x_ptr, w_ptr, scale_ptr, shift_ptr, y_ptr, psum_ptr, pmax_ptr, pties_ptr,
                   C, H, W, Wo, HWo, stride_x_b, stride_x_c, stride_x_y, stride_x_x,
                   stride_y_b, stride_y_c, stride_y_y, stride_y_x,
                   STRIDE: tl.constexpr, K: tl.constexpr, BLOCK_P: tl.constexpr,
                   BLOCK_C: tl.constexpr, TILES: tl.constexpr):
    """y = GELU(conv * scale + shift) over TILES pixel tiles, and this program's sum / max /
    ties-at-max of y as stored (element-wise over the tiles, reduced across threads once)."""
    b = tl.program_id(0)
    row = b * tl.num_programs(1) + tl.program_id(1)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    scale = tl.load(scale_ptr + offs_c, mask=cmask, other=0.0)
    shift = tl.load(shift_ptr + offs_c, mask=cmask, other=0.0)
    acc_sum = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    acc_max = tl.full([BLOCK_P, BLOCK_C], _NEG_INF, tl.float32)
    acc_ties = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for t in range(TILES):
        offs_p = (tl.program_id(1) * TILES + t) * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = offs_p < HWo
        acc = _conv_tile(x_ptr, w_ptr, b, offs_p, offs_c, pmask, cmask, C, H, W, Wo,
                         stride_x_b, stride_x_c, stride_x_y, stride_x_x, STRIDE, K, BLOCK_P,
                         BLOCK_C)
        y = gelu(acc * scale[None, :] + shift[None, :]).to(y_ptr.dtype.element_ty)
        m = pmask[:, None] & cmask[None, :]
        tl.store(y_ptr + b * stride_y_b + pixel_offsets(offs_p, Wo, stride_y_y, stride_y_x)[:, None]
                 + offs_c[None, :] * stride_y_c, y, mask=m)
        yf = y.to(tl.float32)
        acc_sum += tl.where(m, yf, 0.0)
        acc_max, acc_ties = add_max_ties(acc_max, acc_ties, tl.where(m, yf, _NEG_INF))
    tile_max, tile_ties = reduce_max_ties(acc_max, acc_ties, 0)
    tl.store(psum_ptr + row * C + offs_c, tl.sum(acc_sum, 0), mask=cmask)
    tl.store(pmax_ptr + row * C + offs_c, tile_max, mask=cmask)
    tl.store(pties_ptr + row * C + offs_c, tile_ties, mask=cmask)


@triton.jit
def _grad_pre_activation(x_ptr, w_ptr, y_ptr, gy_ptr, gavg_ptr, gmax_ptr, ymax_ptr, yties_ptr,
                         scale_ptr, shift_ptr, mean_ptr, rstd_ptr, b, offs_p, offs_c, pmask,
                         cmask, C, H, W, Wo, HWo, stride_x_b, stride_x_c, stride_x_y, stride_x_x,
                         stride_y_b, stride_y_c, stride_y_y, stride_y_x,
                         stride_gy_b, stride_gy_c, stride_gy_y, stride_gy_x,
                         STRIDE: tl.constexpr, K: tl.constexpr, BLOCK_P: tl.constexpr,
                         BLOCK_C: tl.constexpr):
    """(da, xhat) at a tile: the conv recomputed, the normalised value and dL/d(BN output)."""
    acc = _conv_tile(x_ptr, w_ptr, b, offs_p, offs_c, pmask, cmask, C, H, W, Wo,
                     stride_x_b, stride_x_c, stride_x_y, stride_x_x, STRIDE, K, BLOCK_P, BLOCK_C)
    m = pmask[:, None] & cmask[None, :]
    pix_y = pixel_offsets(offs_p, Wo, stride_y_y, stride_y_x)[:, None]
    pix_gy = pixel_offsets(offs_p, Wo, stride_gy_y, stride_gy_x)[:, None]
    y = tl.load(y_ptr + b * stride_y_b + pix_y + offs_c[None, :] * stride_y_c, mask=m,
                other=0.0).to(tl.float32)
    gy = tl.load(gy_ptr + b * stride_gy_b + pix_gy + offs_c[None, :] * stride_gy_c, mask=m,
                 other=0.0).to(tl.float32)
    gavg = tl.load(gavg_ptr + b * C + offs_c, mask=cmask, other=0.0)
    gmax = tl.load(gmax_ptr + b * C + offs_c, mask=cmask, other=0.0)
    ymax = tl.load(ymax_ptr + b * C + offs_c, mask=cmask, other=0.0)
    yties = tl.load(yties_ptr + b * C + offs_c, mask=cmask, other=1.0)
    scale = tl.load(scale_ptr + offs_c, mask=cmask, other=0.0)
    shift = tl.load(shift_ptr + offs_c, mask=cmask, other=0.0)
    mean = tl.load(mean_ptr + offs_c, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + offs_c, mask=cmask, other=0.0)
    dy = gy + (gavg / HWo)[None, :] + (gmax / yties)[None, :] * (y == ymax[None, :]).to(tl.float32)
    da = tl.where(m, dy * gelu_grad(acc * scale[None, :] + shift[None, :]), 0.0)
    xhat = (acc - mean[None, :]) * rstd[None, :]
    return da, xhat


@triton.autotune(_WARPS, key=["C", "HWo"])
@triton.jit
def _grad_reduce_kernel(x_ptr, w_ptr, y_ptr, gy_ptr, gavg_ptr, gmax_ptr, ymax_ptr, yties_ptr,
                        scale_ptr, shift_ptr, mean_ptr, rstd_ptr, pda_ptr, pdax_ptr,
                        C, H, W, Wo, HWo, stride_x_b, stride_x_c, stride_x_y, stride_x_x,
                        stride_y_b, stride_y_c, stride_y_y, stride_y_x,
                        stride_gy_b, stride_gy_c, stride_gy_y, stride_gy_x,
                        STRIDE: tl.constexpr, K: tl.constexpr, BLOCK_P: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    """Per-tile sums of da and da * xhat (-> dbeta, dgamma)."""
    b, offs_p, offs_c, pmask, cmask = tile(HWo, C, BLOCK_P, BLOCK_C)
    row = b * tl.num_programs(1) + tl.program_id(1)
    da, xhat = _grad_pre_activation(
        x_ptr, w_ptr, y_ptr, gy_ptr, gavg_ptr, gmax_ptr, ymax_ptr, yties_ptr, scale_ptr,
        shift_ptr, mean_ptr, rstd_ptr, b, offs_p, offs_c, pmask, cmask, C, H, W, Wo, HWo,
        stride_x_b, stride_x_c, stride_x_y, stride_x_x, stride_y_b, stride_y_c, stride_y_y,
        stride_y_x, stride_gy_b, stride_gy_c, stride_gy_y, stride_gy_x, STRIDE, K, BLOCK_P,
        BLOCK_C)
    tl.store(pda_ptr + row * C + offs_c, tl.sum(da, 0), mask=cmask)
    tl.store(pdax_ptr + row * C + offs_c, tl.sum(da * xhat, 0), mask=cmask)


@triton.autotune(_WARPS, key=["C", "HWo"])
@triton.jit
def _grad_conv_output_kernel(x_ptr, w_ptr, y_ptr, gy_ptr, gavg_ptr, gmax_ptr, ymax_ptr,
                             yties_ptr, scale_ptr, shift_ptr, mean_ptr, rstd_ptr, dbeta_ptr,
                             dgamma_ptr, dv_ptr, pdw_ptr, C, H, W, Wo, HWo, inv_n,
                             stride_x_b, stride_x_c, stride_x_y, stride_x_x,
                             stride_y_b, stride_y_c, stride_y_y, stride_y_x,
                             stride_gy_b, stride_gy_c, stride_gy_y, stride_gy_x,
                             TRAINING: tl.constexpr, STRIDE: tl.constexpr, K: tl.constexpr,
                             BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, TILES: tl.constexpr,
                             TAPS: tl.constexpr):
    """dv = dL/d(conv output) into a B x Ho x Wo x C buffer, and this program's share of
    d(weight)[c, t] = sum_p dv * x(p shifted by tap t), summed over TILES pixel tiles in
    registers ([BLOCK_C, TAPS >= K*K]) so the partials stay small."""
    b = tl.program_id(0)
    row = b * tl.num_programs(1) + tl.program_id(1)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    taps = tl.arange(0, TAPS)
    scale = tl.load(scale_ptr + offs_c, mask=cmask, other=0.0)
    dbeta = tl.load(dbeta_ptr + offs_c, mask=cmask, other=0.0)
    dgamma = tl.load(dgamma_ptr + offs_c, mask=cmask, other=0.0)
    dw_acc = tl.zeros([BLOCK_C, TAPS], tl.float32)
    base = x_ptr + b * stride_x_b + offs_c[None, :] * stride_x_c
    for t in range(TILES):
        offs_p = (tl.program_id(1) * TILES + t) * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = offs_p < HWo
        da, xhat = _grad_pre_activation(
            x_ptr, w_ptr, y_ptr, gy_ptr, gavg_ptr, gmax_ptr, ymax_ptr, yties_ptr, scale_ptr,
            shift_ptr, mean_ptr, rstd_ptr, b, offs_p, offs_c, pmask, cmask, C, H, W, Wo, HWo,
            stride_x_b, stride_x_c, stride_x_y, stride_x_x, stride_y_b, stride_y_c, stride_y_y,
            stride_y_x, stride_gy_b, stride_gy_c, stride_gy_y, stride_gy_x, STRIDE, K, BLOCK_P,
            BLOCK_C)
        m = pmask[:, None] & cmask[None, :]
        if TRAINING:  # the batch mean and variance depend on every pixel of the channel
            dv = scale[None, :] * (da - (dbeta * inv_n)[None, :]
                                   - xhat * (dgamma * inv_n)[None, :])
        else:
            dv = da * scale[None, :]
        dv = tl.where(m, dv, 0.0)
        tl.store(dv_ptr + (b * HWo + offs_p)[:, None] * C + offs_c[None, :],
                 dv.to(dv_ptr.dtype.element_ty), mask=m)
        oh = offs_p // Wo
        ow = offs_p % Wo
        for ky in tl.static_range(K):
            ih = oh * STRIDE + (ky - K // 2)
            for kx in tl.static_range(K):
                iw = ow * STRIDE + (kx - K // 2)
                ok = pmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                xv = tl.load(base + (ih * stride_x_y + iw * stride_x_x)[:, None],
                             mask=ok[:, None] & cmask[None, :], other=0.0).to(tl.float32)
                tap_sum = tl.sum(dv * xv, 0)
                dw_acc += tl.where(taps[None, :] == ky * K + kx, tap_sum[:, None], 0.0)
    tl.store(pdw_ptr + (row * C + offs_c)[:, None] * (K * K) + taps[None, :], dw_acc,
             mask=cmask[:, None] & (taps < K * K)[None, :])


@triton.autotune(_WARPS, key=["C", "HW"])
@triton.jit
def _grad_input_kernel(dv_ptr, w_ptr, dx_ptr, C, H, W, HW, Ho, Wo,
                       stride_dx_b, stride_dx_c, stride_dx_y, stride_dx_x, STRIDE: tl.constexpr,
                       K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """dx[q] = sum_t w[t] * dv[o] over the output pixels o that read q through tap t."""
    b, offs_q, offs_c, qmask, cmask = tile(HW, C, BLOCK_P, BLOCK_C)
    ih = offs_q // W
    iw = offs_q % W
    acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for ky in tl.static_range(K):
        nh = ih + (K // 2 - ky)
        oh = nh // STRIDE
        okh = (nh >= 0) & (nh % STRIDE == 0) & (oh < Ho)
        for kx in tl.static_range(K):
            nw = iw + (K // 2 - kx)
            ow = nw // STRIDE
            ok = qmask & okh & (nw >= 0) & (nw % STRIDE == 0) & (ow < Wo)
            dv = tl.load(dv_ptr + ((b * Ho + oh) * Wo + ow)[:, None] * C + offs_c[None, :],
                         mask=ok[:, None] & cmask[None, :], other=0.0)
            wv = tl.load(w_ptr + (ky * K + kx) * C + offs_c, mask=cmask, other=0.0)
            acc += dv.to(tl.float32) * wv.to(tl.float32)[None, :]
    tl.store(dx_ptr + b * stride_dx_b + (ih * stride_dx_y + iw * stride_dx_x)[:, None]
             + offs_c[None, :] * stride_dx_c, acc.to(dx_ptr.dtype.element_ty),
             mask=qmask[:, None] & cmask[None, :])


# ------------------------------------------------------------------------------ launchers

def _taps(weight):
    """C x 1 x k x k weights as k*k x C (tap-major): a tap's weights for a channel tile are one
    contiguous vector load, where the C x k*k layout took one scalar load per channel."""
    return weight.reshape(weight.shape[0], -1).t().contiguous()


def _grid(B, HWo, C):
    return (B, triton.cdiv(HWo, TILE_P), triton.cdiv(C, TILE_C))


def _partials(B, HWo, C, device, n=1):
    rows = B * triton.cdiv(HWo, TILE_P)
    return [torch.empty(rows, C, device=device, dtype=torch.float32) for _ in range(n)]


def batch_stats(x, weight, stride: int):
    """Per-channel mean and biased / unbiased variance of the conv output (float32)."""
    B, C, H, W = x.shape
    k = weight.shape[-1]
    Ho, Wo = conv_out_hw(x, k, stride)
    HWo = Ho * Wo
    psum, pm2 = _partials(B, HWo, C, x.device, 2)
    _batch_stats_kernel[_grid(B, HWo, C)](x_ptr=x, w_ptr=_taps(weight), psum_ptr=psum,
                                          pm2_ptr=pm2, C=C, H=H, W=W, Wo=Wo, HWo=HWo,
                                          **strides("x", x), STRIDE=stride, K=k, BLOCK_P=TILE_P,
                                          BLOCK_C=TILE_C)
    n_tile = torch.full((triton.cdiv(HWo, TILE_P),), float(TILE_P), device=x.device)
    n_tile[-1] = HWo - TILE_P * (n_tile.numel() - 1)
    n_tile = n_tile.repeat(B)[:, None]
    n = B * HWo
    mean = psum.sum(0) / n
    m2 = (pm2 + n_tile * (psum / n_tile - mean) ** 2).sum(0)
    return mean, m2 / n, m2 / max(n - 1, 1)


def forward(x, weight, scale, shift, stride: int):
    """y = GELU(dwconv(x) * scale + shift) and float32 per-channel (avg, max, ties at max)."""
    B, C, H, W = x.shape
    k = weight.shape[-1]
    Ho, Wo = conv_out_hw(x, k, stride)
    HWo = Ho * Wo
    y = empty_like_input(x, (B, C, Ho, Wo))
    groups = triton.cdiv(triton.cdiv(HWo, TILE_P), OUT_TILES)
    psum, pmax, pties = (torch.empty(B * groups, C, device=x.device, dtype=torch.float32)
                         for _ in range(3))
    _output_kernel[(B, groups, triton.cdiv(C, TILE_C))](
        x_ptr=x, w_ptr=_taps(weight), scale_ptr=scale, shift_ptr=shift, y_ptr=y, psum_ptr=psum,
        pmax_ptr=pmax, pties_ptr=pties, C=C, H=H, W=W, Wo=Wo, HWo=HWo, **strides("x", x),
        **strides("y", y), STRIDE=stride, K=k, BLOCK_P=TILE_P, BLOCK_C=TILE_C, TILES=OUT_TILES)
    psum, pmax, pties = (t.view(B, -1, C) for t in (psum, pmax, pties))
    mx = pmax.amax(1)
    ties = (pties * (pmax == mx[:, None]).float()).sum(1)
    return y, psum.sum(1) / HWo, mx, ties


def backward(gy, gavg, gmax, x, weight, y, ymax, yties, scale, shift, mean, rstd,
             training: bool, stride: int):
    """(dx, d weight, d(sum da * xhat) = dgamma, dbeta), float32 for the per-channel ones."""
    B, C, H, W = x.shape
    k = weight.shape[-1]
    Ho, Wo = y.shape[2:]
    HWo = Ho * Wo
    taps = _taps(weight)
    # the arguments of _grad_pre_activation, which both of the first two kernels call
    pre = dict(x_ptr=x, w_ptr=taps, y_ptr=y, gy_ptr=gy, gavg_ptr=gavg.float().contiguous(),
               gmax_ptr=gmax.float().contiguous(), ymax_ptr=ymax, yties_ptr=yties,
               scale_ptr=scale, shift_ptr=shift, mean_ptr=mean, rstd_ptr=rstd,
               C=C, H=H, W=W, Wo=Wo, HWo=HWo, **strides("x", x), **strides("y", y),
               **strides("gy", gy), STRIDE=stride, K=k, BLOCK_C=TILE_C)
    pda, pdax = _partials(B, HWo, C, x.device, 2)
    _grad_reduce_kernel[_grid(B, HWo, C)](**pre, pda_ptr=pda, pdax_ptr=pdax, BLOCK_P=TILE_P)
    dbeta, dgamma = pda.sum(0), pdax.sum(0)

    dv = torch.empty(B, Ho, Wo, C, device=x.device, dtype=x.dtype)
    groups = triton.cdiv(triton.cdiv(HWo, DW_TILE_P), DW_TILES)
    pdw = torch.empty(B * groups, C, k * k, device=x.device, dtype=torch.float32)
    _grad_conv_output_kernel[(B, groups, triton.cdiv(C, TILE_C))](
        **pre, dbeta_ptr=dbeta, dgamma_ptr=dgamma, dv_ptr=dv, pdw_ptr=pdw,
        inv_n=1.0 / (B * HWo), TRAINING=training, BLOCK_P=DW_TILE_P, TILES=DW_TILES,
        TAPS=triton.next_power_of_2(k * k))
    dweight = pdw.sum(0).view(C, 1, k, k)

    dx = torch.empty_like(x)
    _grad_input_kernel[(B, triton.cdiv(H * W, TILE_P), triton.cdiv(C, TILE_C))](
        dv_ptr=dv, w_ptr=taps, dx_ptr=dx, C=C, H=H, W=W, HW=H * W, Ho=Ho, Wo=Wo,
        **strides("dx", dx), STRIDE=stride, K=k, BLOCK_P=TILE_P, BLOCK_C=TILE_C)
    return dx, dweight, dgamma, dbeta
