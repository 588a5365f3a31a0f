"""The channel-spatial attention with its residual, out = h * ca * sa + h, as Triton kernels
(forward and backward).

Forward passes over h (B x C x H x W, any strides; float32 accumulation throughout):
  1. per-channel sum / max over the pixels (with the number of pixels tied at the max),
  2. the channel gate ca = sigmoid(MLP(avg) + MLP(max)) (one small program per image),
  3. per-pixel mean / max over the channels of u = h * ca,
  4. the k x k spatial conv over those two maps, then sigmoid: sa,
  5. out = h * (ca * sa + 1).
h is read three times and out written once, the floor docs/performance.md (section 1) counts
for this op.
The per-channel and per-pixel statistics are saved (they are 1/C and 1/(H W) of h) so the
backward recomputes u instead of storing it.

Backward (g = dL/dout; dut = dL/du summed over its three uses):
  B1. per pixel: dlogit = sum_c(g * u) * sa * (1 - sa),
  B2. spatial conv backward: d(pooled) and the conv-weight partials,
  B3. per channel: dca = sum_p(dut * h),
  then the gate MLP backward on B x C tensors (torch, negligible), and
  B4. dh = g + dut * ca + davg / HW + dmax * [h == max] / ties.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._config import INTERPRET, configs, next_pow2, strides
from ._math import add_max_ties, gelu, pixel_offsets, reduce_max_ties, sigmoid, tile

_NEG_INF = tl.constexpr(float("-inf"))
_CONV_GRAD_BLOCK_P = 64 if INTERPRET else 256
# (BLOCK_P, BLOCK_C) candidates of the [pixels, channels] kernels, by what one program covers;
# the first is the one tests/triton_compile_check.py compiles
_OVER_PIXELS = ((64, 64), (128, 32), (32, 128))  # a channel block, looping over all pixels
_OVER_CHANNELS = ((32, 64), (64, 64), (16, 128))  # a pixel block, looping over all channels
_ONE_TILE = ((64, 64), (32, 128), (128, 32))


def _autotuned(tiles):
    return triton.autotune(configs(gpu=[dict(BLOCK_P=p, BLOCK_C=c) for p, c in tiles],
                                   interpret=dict(BLOCK_P=32, BLOCK_C=16), warps=(8, 4)),
                           key=["C", "HW"])


# ------------------------------------------------------------------------------ forward kernels

@_autotuned(_OVER_PIXELS)
@triton.jit
def _channel_stats_kernel(h_ptr, sum_ptr, max_ptr, ties_ptr, C, HW, W,
                          stride_h_b, stride_h_c, stride_h_y, stride_h_x,
                          BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    # element-wise accumulators, reduced across threads once after the loop
    acc_sum = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    acc_max = tl.full([BLOCK_P, BLOCK_C], _NEG_INF, tl.float32)
    acc_ties = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    base = h_ptr + b * stride_h_b + offs_c[None, :] * stride_h_c
    for p0 in range(0, HW, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        m = (offs_p < HW)[:, None] & cmask[None, :]
        v = tl.load(base + pixel_offsets(offs_p, W, stride_h_y, stride_h_x)[:, None], mask=m,
                    other=0.0)
        v = v.to(tl.float32)
        acc_sum += v
        acc_max, acc_ties = add_max_ties(acc_max, acc_ties, tl.where(m, v, _NEG_INF))
    ch_max, ch_ties = reduce_max_ties(acc_max, acc_ties, 0)
    out = b * C + offs_c
    tl.store(sum_ptr + out, tl.sum(acc_sum, 0), mask=cmask)
    tl.store(max_ptr + out, ch_max, mask=cmask)
    tl.store(ties_ptr + out, ch_ties, mask=cmask)


@triton.jit
def _channel_gate_kernel(sum_ptr, max_ptr, w1_ptr, w2_ptr, ca_ptr, C, R, inv_hw,
                         BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr):
    """ca = sigmoid(W2 (gelu(W1 avg) + gelu(W1 max))): fc2 is linear, so it is applied once."""
    b = tl.program_id(0)
    offs_r = tl.arange(0, BLOCK_R)
    rmask = offs_r < R
    za = tl.zeros([BLOCK_R], tl.float32)
    zm = tl.zeros([BLOCK_R], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        cmask = offs_c < C
        avg = tl.load(sum_ptr + b * C + offs_c, mask=cmask, other=0.0) * inv_hw
        mx = tl.load(max_ptr + b * C + offs_c, mask=cmask, other=0.0)
        w1 = tl.load(w1_ptr + offs_r[:, None] * C + offs_c[None, :],
                     mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        za += tl.sum(w1 * avg[None, :], 1)
        zm += tl.sum(w1 * mx[None, :], 1)
    hidden = gelu(za) + gelu(zm)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        cmask = offs_c < C
        w2 = tl.load(w2_ptr + offs_c[:, None] * R + offs_r[None, :],
                     mask=cmask[:, None] & rmask[None, :], other=0.0).to(tl.float32)
        tl.store(ca_ptr + b * C + offs_c, sigmoid(tl.sum(w2 * hidden[None, :], 1)), mask=cmask)


@_autotuned(_OVER_CHANNELS)
@triton.jit
def _pixel_pool_kernel(h_ptr, ca_ptr, pooled_ptr, ties_ptr, C, HW, W,
                       stride_h_b, stride_h_c, stride_h_y, stride_h_x, inv_c,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """pooled[b, 0, p] = mean_c(h * ca), pooled[b, 1, p] = max_c(h * ca) and ties[b, p], the
    number of channels tied at that max."""
    b = tl.program_id(0)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < HW
    base = h_ptr + b * stride_h_b + pixel_offsets(offs_p, W, stride_h_y, stride_h_x)[:, None]
    # element-wise accumulators, reduced across threads once after the loop
    acc_sum = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    acc_max = tl.full([BLOCK_P, BLOCK_C], _NEG_INF, tl.float32)
    acc_ties = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        cmask = offs_c < C
        m = pmask[:, None] & cmask[None, :]
        ca = tl.load(ca_ptr + b * C + offs_c, mask=cmask, other=0.0)
        u = tl.load(base + offs_c[None, :] * stride_h_c, mask=m,
                    other=0.0).to(tl.float32) * ca[None, :]
        acc_sum += u
        acc_max, acc_ties = add_max_ties(acc_max, acc_ties, tl.where(m, u, _NEG_INF))
    pixel_max, pixel_ties = reduce_max_ties(acc_max, acc_ties, 1)
    tl.store(pooled_ptr + b * 2 * HW + offs_p, tl.sum(acc_sum, 1) * inv_c, mask=pmask)
    tl.store(pooled_ptr + (b * 2 + 1) * HW + offs_p, pixel_max, mask=pmask)
    tl.store(ties_ptr + b * HW + offs_p, pixel_ties, mask=pmask)


@triton.autotune(configs(gpu=[dict(BLOCK_P=128), dict(BLOCK_P=256)], interpret=dict(BLOCK_P=64),
                         warps=(4,)), key=["HW"])
@triton.jit
def _spatial_gate_kernel(pooled_ptr, w_ptr, s_ptr, H, W, HW, K: tl.constexpr,
                         BLOCK_P: tl.constexpr):
    """sa = sigmoid(conv_kxk(pooled, w)), zero padding k // 2."""
    b = tl.program_id(0)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < HW
    oh = offs_p // W
    ow = offs_p % W
    acc = tl.zeros([BLOCK_P], tl.float32)
    for ci in tl.static_range(2):
        for ky in tl.static_range(K):
            ih = oh + (ky - K // 2)
            for kx in tl.static_range(K):
                iw = ow + (kx - K // 2)
                ok = pmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                v = tl.load(pooled_ptr + (b * 2 + ci) * HW + ih * W + iw, mask=ok, other=0.0)
                acc += v * tl.load(w_ptr + (ci * K + ky) * K + kx).to(tl.float32)
    tl.store(s_ptr + b * HW + offs_p, sigmoid(acc), mask=pmask)


@_autotuned(_ONE_TILE)
@triton.jit
def _apply_kernel(h_ptr, ca_ptr, s_ptr, out_ptr, C, HW, W,
                  stride_h_b, stride_h_c, stride_h_y, stride_h_x,
                  stride_out_b, stride_out_c, stride_out_y, stride_out_x,
                  BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    b, offs_p, offs_c, pmask, cmask = tile(HW, C, BLOCK_P, BLOCK_C)
    m = pmask[:, None] & cmask[None, :]
    h = tl.load(h_ptr + b * stride_h_b + pixel_offsets(offs_p, W, stride_h_y, stride_h_x)[:, None]
                + offs_c[None, :] * stride_h_c, mask=m, other=0.0).to(tl.float32)
    ca = tl.load(ca_ptr + b * C + offs_c, mask=cmask, other=0.0)
    s = tl.load(s_ptr + b * HW + offs_p, mask=pmask, other=0.0)
    out = h * (ca[None, :] * s[:, None] + 1.0)
    tl.store(out_ptr + b * stride_out_b
             + pixel_offsets(offs_p, W, stride_out_y, stride_out_x)[:, None]
             + offs_c[None, :] * stride_out_c, out.to(out_ptr.dtype.element_ty), mask=m)


# ------------------------------------------------------------------------------ backward kernels

@triton.jit
def _du_tile(g_ptr, h_ptr, ca, s_ptr, dpooled_ptr, pooled_ptr, pixel_ties_ptr, b, offs_p, offs_c,
             pmask, m, HW, W, stride_g_b, stride_g_c, stride_g_y, stride_g_x,
             stride_h_b, stride_h_c, stride_h_y, stride_h_x, inv_c):
    """(g, h, dL/du) at a [pixels, channels] tile: dL/du through out = u * sa, through the
    channel mean and through the channel max (split evenly among ties, as torch.amax does)."""
    g = tl.load(g_ptr + b * stride_g_b + pixel_offsets(offs_p, W, stride_g_y, stride_g_x)[:, None]
                + offs_c[None, :] * stride_g_c, mask=m, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + b * stride_h_b + pixel_offsets(offs_p, W, stride_h_y, stride_h_x)[:, None]
                + offs_c[None, :] * stride_h_c, mask=m, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + b * HW + offs_p, mask=pmask, other=0.0)
    dp_mean = tl.load(dpooled_ptr + b * 2 * HW + offs_p, mask=pmask, other=0.0)
    dp_max = tl.load(dpooled_ptr + (b * 2 + 1) * HW + offs_p, mask=pmask, other=0.0)
    p_max = tl.load(pooled_ptr + (b * 2 + 1) * HW + offs_p, mask=pmask, other=0.0)
    p_ties = tl.load(pixel_ties_ptr + b * HW + offs_p, mask=pmask, other=1.0)
    at_max = (h * ca[None, :] == p_max[:, None]).to(tl.float32)
    du = g * s[:, None] + (dp_mean * inv_c)[:, None] + (dp_max / p_ties)[:, None] * at_max
    return g, h, du


@_autotuned(_OVER_CHANNELS)
@triton.jit
def _spatial_logit_grad_kernel(g_ptr, h_ptr, ca_ptr, s_ptr, dlogit_ptr, C, HW, W,
                               stride_g_b, stride_g_c, stride_g_y, stride_g_x,
                               stride_h_b, stride_h_c, stride_h_y, stride_h_x,
                               BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """dlogit = sum_c(g * h * ca) * sa * (1 - sa), the gradient at the spatial conv output."""
    b = tl.program_id(0)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < HW
    g_base = g_ptr + b * stride_g_b + pixel_offsets(offs_p, W, stride_g_y, stride_g_x)[:, None]
    h_base = h_ptr + b * stride_h_b + pixel_offsets(offs_p, W, stride_h_y, stride_h_x)[:, None]
    acc = tl.zeros([BLOCK_P], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        cmask = offs_c < C
        m = pmask[:, None] & cmask[None, :]
        ca = tl.load(ca_ptr + b * C + offs_c, mask=cmask, other=0.0)
        g = tl.load(g_base + offs_c[None, :] * stride_g_c, mask=m, other=0.0).to(tl.float32)
        h = tl.load(h_base + offs_c[None, :] * stride_h_c, mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(g * h * ca[None, :], 1)
    s = tl.load(s_ptr + b * HW + offs_p, mask=pmask, other=0.0)
    tl.store(dlogit_ptr + b * HW + offs_p, acc * s * (1.0 - s), mask=pmask)


@triton.autotune(configs(gpu=[{}], interpret={}, warps=(8, 4)), key=["HW"])
@triton.jit
def _spatial_conv_grad_kernel(dlogit_ptr, pooled_ptr, w_ptr, dpooled_ptr, dw_part_ptr, H, W, HW,
                              K: tl.constexpr, BLOCK_P: tl.constexpr):
    """d(pooled)[q] = sum_t w[t] * dlogit[q - off_t], and this program's share of
    dw[t] = sum_p dlogit[p] * pooled[p + off_t] (one row of partials per program)."""
    b = tl.program_id(0)
    pid_p = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < HW
    oh = offs_p // W
    ow = offs_p % W
    dl = tl.load(dlogit_ptr + b * HW + offs_p, mask=pmask, other=0.0)
    part_row = dw_part_ptr + (b * tl.num_programs(1) + pid_p) * (2 * K * K)
    for ci in tl.static_range(2):
        acc = tl.zeros([BLOCK_P], tl.float32)
        for ky in tl.static_range(K):
            for kx in tl.static_range(K):
                wv = tl.load(w_ptr + (ci * K + ky) * K + kx).to(tl.float32)
                # d(pooled) gathers dlogit from the mirrored offset
                sh_ = oh - (ky - K // 2)
                sw_ = ow - (kx - K // 2)
                ok = pmask & (sh_ >= 0) & (sh_ < H) & (sw_ >= 0) & (sw_ < W)
                acc += wv * tl.load(dlogit_ptr + b * HW + sh_ * W + sw_, mask=ok, other=0.0)
                ih = oh + (ky - K // 2)
                iw = ow + (kx - K // 2)
                ok = pmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                pv = tl.load(pooled_ptr + (b * 2 + ci) * HW + ih * W + iw, mask=ok, other=0.0)
                tl.store(part_row + (ci * K + ky) * K + kx, tl.sum(dl * pv, 0))
        tl.store(dpooled_ptr + (b * 2 + ci) * HW + offs_p, acc, mask=pmask)


@_autotuned(_OVER_PIXELS)
@triton.jit
def _channel_gate_grad_kernel(g_ptr, h_ptr, ca_ptr, s_ptr, dpooled_ptr, pooled_ptr,
                              pixel_ties_ptr, dca_ptr, C, HW, W,
                              stride_g_b, stride_g_c, stride_g_y, stride_g_x,
                              stride_h_b, stride_h_c, stride_h_y, stride_h_x, inv_c,
                              BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """dca[b, c] = sum_p dL/du * h."""
    b = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    ca = tl.load(ca_ptr + b * C + offs_c, mask=cmask, other=0.0)
    acc = tl.zeros([BLOCK_C], tl.float32)
    for p0 in range(0, HW, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        pmask = offs_p < HW
        m = pmask[:, None] & cmask[None, :]
        _, h, du = _du_tile(g_ptr, h_ptr, ca, s_ptr, dpooled_ptr, pooled_ptr, pixel_ties_ptr, b,
                            offs_p, offs_c, pmask, m, HW, W,
                            stride_g_b, stride_g_c, stride_g_y, stride_g_x,
                            stride_h_b, stride_h_c, stride_h_y, stride_h_x, inv_c)
        acc += tl.sum(tl.where(m, du * h, 0.0), 0)
    tl.store(dca_ptr + b * C + offs_c, acc, mask=cmask)


@_autotuned(_ONE_TILE)
@triton.jit
def _input_grad_kernel(g_ptr, h_ptr, ca_ptr, s_ptr, dpooled_ptr, pooled_ptr, pixel_ties_ptr,
                       ch_max_ptr, ch_ties_ptr, dsum_ptr, dmax_ptr, dh_ptr, C, HW, W,
                       stride_g_b, stride_g_c, stride_g_y, stride_g_x,
                       stride_h_b, stride_h_c, stride_h_y, stride_h_x,
                       stride_dh_b, stride_dh_c, stride_dh_y, stride_dh_x, inv_c,
                       STATS_GRAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """dh = g + dL/du * ca (+ d(sum) + d(max) * [h == max] / ties, the channel statistics' share,
    when STATS_GRAD)."""
    b, offs_p, offs_c, pmask, cmask = tile(HW, C, BLOCK_P, BLOCK_C)
    m = pmask[:, None] & cmask[None, :]
    ca = tl.load(ca_ptr + b * C + offs_c, mask=cmask, other=0.0)
    g, h, du = _du_tile(g_ptr, h_ptr, ca, s_ptr, dpooled_ptr, pooled_ptr, pixel_ties_ptr, b,
                        offs_p, offs_c, pmask, m, HW, W,
                        stride_g_b, stride_g_c, stride_g_y, stride_g_x,
                        stride_h_b, stride_h_c, stride_h_y, stride_h_x, inv_c)
    dh = g + du * ca[None, :]
    if STATS_GRAD:
        ch_max = tl.load(ch_max_ptr + b * C + offs_c, mask=cmask, other=0.0)
        ch_ties = tl.load(ch_ties_ptr + b * C + offs_c, mask=cmask, other=1.0)
        dsum = tl.load(dsum_ptr + b * C + offs_c, mask=cmask, other=0.0)
        dmax = tl.load(dmax_ptr + b * C + offs_c, mask=cmask, other=0.0)
        at_max = (h == ch_max[None, :]).to(tl.float32)
        dh += dsum[None, :] + (dmax / ch_ties)[None, :] * at_max
    tl.store(dh_ptr + b * stride_dh_b
             + pixel_offsets(offs_p, W, stride_dh_y, stride_dh_x)[:, None]
             + offs_c[None, :] * stride_dh_c, dh.to(dh_ptr.dtype.element_ty), mask=m)


# ------------------------------------------------------------------------------ launchers

def _grid_pc(B, HW, C):
    return lambda meta: (B, triton.cdiv(HW, meta["BLOCK_P"]), triton.cdiv(C, meta["BLOCK_C"]))


def channel_stats(h: torch.Tensor):
    """Per-channel sum, max and number of pixels tied at the max (float32, B x C each)."""
    B, C, H, W = h.shape
    f32 = dict(device=h.device, dtype=torch.float32)
    ch_sum, ch_max, ch_ties = (torch.empty(B, C, **f32) for _ in range(3))
    _channel_stats_kernel[lambda meta: (B, triton.cdiv(C, meta["BLOCK_C"]))](
        h_ptr=h, sum_ptr=ch_sum, max_ptr=ch_max, ties_ptr=ch_ties, C=C, HW=H * W, W=W,
        **strides("h", h))
    return ch_sum, ch_max, ch_ties


def channel_gate(ch_sum, ch_max, fc1_weight, fc2_weight, hw: int):
    """ca (float32, B x C) from the per-channel sum and max."""
    B, C = ch_sum.shape
    R = fc1_weight.shape[0]
    ca = torch.empty_like(ch_sum)
    _channel_gate_kernel[(B,)](sum_ptr=ch_sum, max_ptr=ch_max, w1_ptr=fc1_weight.contiguous(),
                               w2_ptr=fc2_weight.contiguous(), ca_ptr=ca, C=C, R=R,
                               inv_hw=1.0 / hw, BLOCK_C=min(64, next_pow2(C, 16)),
                               BLOCK_R=next_pow2(R, 16))
    return ca


def spatial_gate(h: torch.Tensor, ca: torch.Tensor, sa_weight: torch.Tensor):
    """pooled (B x 2 x H x W), its max ties (B x H x W) and sa (B x H x W), float32."""
    B, C, H, W = h.shape
    HW = H * W
    f32 = dict(device=h.device, dtype=torch.float32)
    pooled = torch.empty(B, 2, H, W, **f32)
    pixel_ties = torch.empty(B, H, W, **f32)
    s = torch.empty(B, H, W, **f32)
    _pixel_pool_kernel[lambda meta: (B, triton.cdiv(HW, meta["BLOCK_P"]))](
        h_ptr=h, ca_ptr=ca, pooled_ptr=pooled, ties_ptr=pixel_ties, C=C, HW=HW, W=W,
        **strides("h", h), inv_c=1.0 / C)
    _spatial_gate_kernel[lambda meta: (B, triton.cdiv(HW, meta["BLOCK_P"]))](
        pooled_ptr=pooled, w_ptr=sa_weight.contiguous(), s_ptr=s, H=H, W=W, HW=HW,
        K=sa_weight.shape[-1])
    return pooled, pixel_ties, s


def gates(h, fc1_weight, fc2_weight, sa_weight, stats=None):
    """Both gates and the statistics the backward needs: (ch_sum, ch_max, ch_ties, ca, pooled,
    pixel_ties, sa). stats: h's (ch_sum, ch_max, ch_ties) when the producer of h already has
    them."""
    ch_sum, ch_max, ch_ties = channel_stats(h) if stats is None else stats
    ca = channel_gate(ch_sum, ch_max, fc1_weight, fc2_weight, h.shape[2] * h.shape[3])
    return (ch_sum, ch_max, ch_ties, ca, *spatial_gate(h, ca, sa_weight))


def forward(h, fc1_weight, fc2_weight, sa_weight):
    """out and the statistics the backward needs: (out, ch_sum, ch_max, ch_ties, ca, pooled,
    pixel_ties, sa)."""
    stats = gates(h, fc1_weight, fc2_weight, sa_weight)
    _, _, _, ca, _, _, s = stats
    return (apply_gates(h, ca, s), *stats)


def apply_gates(h, ca, s):
    """h * (ca * sa + 1), in h's dtype and memory format."""
    B, C, H, W = h.shape
    out = torch.empty_like(h)
    _apply_kernel[_grid_pc(B, H * W, C)](h_ptr=h, ca_ptr=ca, s_ptr=s, out_ptr=out, C=C,
                                         HW=H * W, W=W, **strides("h", h), **strides("out", out))
    return out


def _gate_mlp_backward(dca, ca, avg, mx, fc1_weight, fc2_weight):
    """Backward of ca = sigmoid(W2 (gelu(W1 avg) + gelu(W1 max))) on B x C tensors."""
    w1 = fc1_weight.flatten(1).float()
    w2 = fc2_weight.flatten(1).float()
    za, zm = avg @ w1.t(), mx @ w1.t()
    dz = dca * ca * (1 - ca)
    dw2 = dz.t() @ (torch.nn.functional.gelu(za) + torch.nn.functional.gelu(zm))
    dhid = dz @ w2
    dza, dzm = dhid * _gelu_grad(za), dhid * _gelu_grad(zm)
    dw1 = dza.t() @ avg + dzm.t() @ mx
    return dza @ w1, dzm @ w1, dw1, dw2


def _gelu_grad(x):
    cdf = 0.5 * (1 + torch.erf(x * 0.7071067811865476))
    return cdf + x * torch.exp(-0.5 * x * x) * 0.3989422804014327


def backward(grad, h, fc1_weight, fc2_weight, sa_weight, ch_sum, ch_max, ch_ties, ca, pooled,
             pixel_ties, s):
    """(dh, d fc1_weight, d fc2_weight, d sa_weight) from the saved statistics."""
    return _backward(grad, h, fc1_weight, fc2_weight, sa_weight, ch_sum, ch_max, ch_ties, ca,
                     pooled, pixel_ties, s, stats_grad_to_input=True)[:4]


def backward_with_stats_grad(grad, h, fc1_weight, fc2_weight, sa_weight, ch_sum, ch_max, ch_ties,
                             ca, pooled, pixel_ties, s):
    """As backward, for statistics supplied by h's producer: dh leaves out their share and the
    gradients w.r.t. the channel average and max (float32, B x C) come back instead,
    (dh, d fc1, d fc2, d sa_weight, d avg, d max)."""
    return _backward(grad, h, fc1_weight, fc2_weight, sa_weight, ch_sum, ch_max, ch_ties, ca,
                     pooled, pixel_ties, s, stats_grad_to_input=False)


def _backward(grad, h, fc1_weight, fc2_weight, sa_weight, ch_sum, ch_max, ch_ties, ca, pooled,
              pixel_ties, s, stats_grad_to_input: bool):
    B, C, H, W = h.shape
    HW = H * W
    k = sa_weight.shape[-1]
    # the arguments the three kernels over g and h share
    g_h = dict(g_ptr=grad, h_ptr=h, ca_ptr=ca, s_ptr=s, C=C, HW=HW, W=W, **strides("g", grad),
               **strides("h", h))
    dlogit = torch.empty_like(s)
    _spatial_logit_grad_kernel[lambda meta: (B, triton.cdiv(HW, meta["BLOCK_P"]))](
        **g_h, dlogit_ptr=dlogit)

    dpooled = torch.empty_like(pooled)
    # one row of conv-weight partials per program; a fixed BLOCK_P so that every row is
    # rewritten on every launch (autotuning only the warps)
    n_blocks = triton.cdiv(HW, _CONV_GRAD_BLOCK_P)
    dw_part = torch.empty(B * n_blocks, 2 * k * k, device=h.device, dtype=torch.float32)
    _spatial_conv_grad_kernel[(B, n_blocks)](
        dlogit_ptr=dlogit, pooled_ptr=pooled, w_ptr=sa_weight.contiguous(), dpooled_ptr=dpooled,
        dw_part_ptr=dw_part, H=H, W=W, HW=HW, K=k, BLOCK_P=_CONV_GRAD_BLOCK_P)
    dsa = dw_part.sum(0).view(1, 2, k, k)

    dca = torch.empty_like(ca)
    _channel_gate_grad_kernel[lambda meta: (B, triton.cdiv(C, meta["BLOCK_C"]))](
        **g_h, dpooled_ptr=dpooled, pooled_ptr=pooled, pixel_ties_ptr=pixel_ties, dca_ptr=dca,
        inv_c=1.0 / C)

    davg, dmax, dw1, dw2 = _gate_mlp_backward(dca, ca, ch_sum / HW, ch_max, fc1_weight, fc2_weight)
    dh = torch.empty_like(h)
    _input_grad_kernel[_grid_pc(B, HW, C)](
        **g_h, dpooled_ptr=dpooled, pooled_ptr=pooled, pixel_ties_ptr=pixel_ties,
        ch_max_ptr=ch_max, ch_ties_ptr=ch_ties, dsum_ptr=(davg / HW).contiguous(),
        dmax_ptr=dmax.contiguous(), dh_ptr=dh, **strides("dh", dh), inv_c=1.0 / C,
        STATS_GRAD=stats_grad_to_input)
    return (dh, dw1.view_as(fc1_weight).to(fc1_weight.dtype),
            dw2.view_as(fc2_weight).to(fc2_weight.dtype), dsa.to(sa_weight.dtype), davg, dmax)
