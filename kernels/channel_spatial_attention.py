"""CBAM with its residual, out = h * ca * sa + h, as Triton kernels (forward and backward).

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

from ._config import INTERPRET, configs, next_pow2
from ._math import add_max_ties, gelu, reduce_max_ties, sigmoid

_NEG_INF = tl.constexpr(float("-inf"))
_CONV_GRAD_BLOCK_P = 64 if INTERPRET else 256


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())


@triton.jit
def _pixel_offsets(offs_p, W, sh, sw):
    return (offs_p // W) * sh + (offs_p % W) * sw


# ------------------------------------------------------------------------------ forward kernels

@triton.autotune(configs(gpu=[dict(BLOCK_P=64, BLOCK_C=64), dict(BLOCK_P=128, BLOCK_C=32),
                              dict(BLOCK_P=32, BLOCK_C=128)],
                         interpret=dict(BLOCK_P=32, BLOCK_C=16), warps=(8, 4)),
                 key=["C", "HW"])
@triton.jit
def _channel_stats_kernel(h_ptr, sum_ptr, max_ptr, cnt_ptr, C, HW, W, sb, sc, sh, sw,
                          BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = offs_c < C
    # element-wise accumulators, reduced across threads once after the loop
    acc_sum = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    acc_max = tl.full([BLOCK_P, BLOCK_C], _NEG_INF, tl.float32)
    acc_cnt = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    base = h_ptr + b * sb + offs_c[None, :] * sc
    for p0 in range(0, HW, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        m = (offs_p < HW)[:, None] & cmask[None, :]
        v = tl.load(base + _pixel_offsets(offs_p, W, sh, sw)[:, None], mask=m, other=0.0)
        v = v.to(tl.float32)
        acc_sum += v
        acc_max, acc_cnt = add_max_ties(acc_max, acc_cnt, tl.where(m, v, _NEG_INF))
    ch_max, ch_cnt = reduce_max_ties(acc_max, acc_cnt, 0)
    out = b * C + offs_c
    tl.store(sum_ptr + out, tl.sum(acc_sum, 0), mask=cmask)
    tl.store(max_ptr + out, ch_max, mask=cmask)
    tl.store(cnt_ptr + out, ch_cnt, mask=cmask)


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


@triton.autotune(configs(gpu=[dict(BLOCK_P=32, BLOCK_C=64), dict(BLOCK_P=64, BLOCK_C=64),
                              dict(BLOCK_P=16, BLOCK_C=128)],
                         interpret=dict(BLOCK_P=32, BLOCK_C=16), warps=(8, 4)),
                 key=["C", "HW"])
@triton.jit
def _pixel_pool_kernel(h_ptr, ca_ptr, pooled_ptr, cnt_ptr, C, HW, W, sb, sc, sh, sw, inv_c,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """pooled[b, 0, p] = mean_c(h * ca), pooled[b, 1, p] = max_c(h * ca), cnt = ties at the max."""
    b = tl.program_id(0)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < HW
    base = h_ptr + b * sb + _pixel_offsets(offs_p, W, sh, sw)[:, None]
    # element-wise accumulators, reduced across threads once after the loop
    acc_sum = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    acc_max = tl.full([BLOCK_P, BLOCK_C], _NEG_INF, tl.float32)
    acc_cnt = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        cmask = offs_c < C
        m = pmask[:, None] & cmask[None, :]
        ca = tl.load(ca_ptr + b * C + offs_c, mask=cmask, other=0.0)
        u = tl.load(base + offs_c[None, :] * sc, mask=m, other=0.0).to(tl.float32) * ca[None, :]
        acc_sum += u
        acc_max, acc_cnt = add_max_ties(acc_max, acc_cnt, tl.where(m, u, _NEG_INF))
    px_max, px_cnt = reduce_max_ties(acc_max, acc_cnt, 1)
    tl.store(pooled_ptr + b * 2 * HW + offs_p, tl.sum(acc_sum, 1) * inv_c, mask=pmask)
    tl.store(pooled_ptr + (b * 2 + 1) * HW + offs_p, px_max, mask=pmask)
    tl.store(cnt_ptr + b * HW + offs_p, px_cnt, mask=pmask)


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


@triton.autotune(configs(gpu=[dict(BLOCK_P=64, BLOCK_C=64), dict(BLOCK_P=32, BLOCK_C=128),
                              dict(BLOCK_P=128, BLOCK_C=32)],
                         interpret=dict(BLOCK_P=32, BLOCK_C=16), warps=(8, 4)),
                 key=["C", "HW"])
@triton.jit
def _apply_kernel(h_ptr, ca_ptr, s_ptr, out_ptr, C, HW, W, sb, sc, sh, sw, ob, oc, oh, ow,
                  BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    pmask = offs_p < HW
    cmask = offs_c < C
    m = pmask[:, None] & cmask[None, :]
    h = tl.load(h_ptr + b * sb + _pixel_offsets(offs_p, W, sh, sw)[:, None] + offs_c[None, :] * sc,
                mask=m, other=0.0).to(tl.float32)
    ca = tl.load(ca_ptr + b * C + offs_c, mask=cmask, other=0.0)
    s = tl.load(s_ptr + b * HW + offs_p, mask=pmask, other=0.0)
    out = h * (ca[None, :] * s[:, None] + 1.0)
    tl.store(out_ptr + b * ob + _pixel_offsets(offs_p, W, oh, ow)[:, None] + offs_c[None, :] * oc,
             out.to(out_ptr.dtype.element_ty), mask=m)


# ------------------------------------------------------------------------------ backward kernels

@triton.jit
def _du_tile(g_ptr, h_ptr, ca, s_ptr, dpooled_ptr, pooled_ptr, pcnt_ptr, b, offs_p, offs_c,
             pmask, m, HW, W, gb, gc, gh, gw, sb, sc, sh, sw, inv_c):
    """(g, h, dL/du) at a [pixels, channels] tile: dL/du through out = u * sa, through the
    channel mean and through the channel max (split evenly among ties, as torch.amax does)."""
    g = tl.load(g_ptr + b * gb + _pixel_offsets(offs_p, W, gh, gw)[:, None] + offs_c[None, :] * gc,
                mask=m, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + b * sb + _pixel_offsets(offs_p, W, sh, sw)[:, None] + offs_c[None, :] * sc,
                mask=m, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + b * HW + offs_p, mask=pmask, other=0.0)
    dp_mean = tl.load(dpooled_ptr + b * 2 * HW + offs_p, mask=pmask, other=0.0)
    dp_max = tl.load(dpooled_ptr + (b * 2 + 1) * HW + offs_p, mask=pmask, other=0.0)
    p_max = tl.load(pooled_ptr + (b * 2 + 1) * HW + offs_p, mask=pmask, other=0.0)
    p_cnt = tl.load(pcnt_ptr + b * HW + offs_p, mask=pmask, other=1.0)
    at_max = (h * ca[None, :] == p_max[:, None]).to(tl.float32)
    du = g * s[:, None] + (dp_mean * inv_c)[:, None] + (dp_max / p_cnt)[:, None] * at_max
    return g, h, du


@triton.autotune(configs(gpu=[dict(BLOCK_P=32, BLOCK_C=64), dict(BLOCK_P=64, BLOCK_C=64),
                              dict(BLOCK_P=16, BLOCK_C=128)],
                         interpret=dict(BLOCK_P=32, BLOCK_C=16), warps=(8, 4)),
                 key=["C", "HW"])
@triton.jit
def _spatial_logit_grad_kernel(g_ptr, h_ptr, ca_ptr, s_ptr, dlogit_ptr, C, HW, W,
                               gb, gc, gh, gw, sb, sc, sh, sw,
                               BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """dlogit = sum_c(g * h * ca) * sa * (1 - sa), the gradient at the spatial conv output."""
    b = tl.program_id(0)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = offs_p < HW
    g_base = g_ptr + b * gb + _pixel_offsets(offs_p, W, gh, gw)[:, None]
    h_base = h_ptr + b * sb + _pixel_offsets(offs_p, W, sh, sw)[:, None]
    acc = tl.zeros([BLOCK_P], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        cmask = offs_c < C
        m = pmask[:, None] & cmask[None, :]
        ca = tl.load(ca_ptr + b * C + offs_c, mask=cmask, other=0.0)
        g = tl.load(g_base + offs_c[None, :] * gc, mask=m, other=0.0).to(tl.float32)
        h = tl.load(h_base + offs_c[None, :] * sc, mask=m, other=0.0).to(tl.float32)
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


@triton.autotune(configs(gpu=[dict(BLOCK_P=64, BLOCK_C=64), dict(BLOCK_P=128, BLOCK_C=32),
                              dict(BLOCK_P=32, BLOCK_C=128)],
                         interpret=dict(BLOCK_P=32, BLOCK_C=16), warps=(8, 4)),
                 key=["C", "HW"])
@triton.jit
def _channel_gate_grad_kernel(g_ptr, h_ptr, ca_ptr, s_ptr, dpooled_ptr, pooled_ptr, pcnt_ptr,
                              dca_ptr, C, HW, W, gb, gc, gh, gw, sb, sc, sh, sw, inv_c,
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
        _, h, du = _du_tile(g_ptr, h_ptr, ca, s_ptr, dpooled_ptr, pooled_ptr, pcnt_ptr, b, offs_p,
                            offs_c, pmask, m, HW, W, gb, gc, gh, gw, sb, sc, sh, sw, inv_c)
        acc += tl.sum(tl.where(m, du * h, 0.0), 0)
    tl.store(dca_ptr + b * C + offs_c, acc, mask=cmask)


@triton.autotune(configs(gpu=[dict(BLOCK_P=64, BLOCK_C=64), dict(BLOCK_P=32, BLOCK_C=128),
                              dict(BLOCK_P=128, BLOCK_C=32)],
                         interpret=dict(BLOCK_P=32, BLOCK_C=16), warps=(8, 4)),
                 key=["C", "HW"])
@triton.jit
def _input_grad_kernel(g_ptr, h_ptr, ca_ptr, s_ptr, dpooled_ptr, pooled_ptr, pcnt_ptr,
                       chmax_ptr, chcnt_ptr, dsum_ptr, dmax_ptr, dh_ptr, C, HW, W,
                       gb, gc, gh, gw, sb, sc, sh, sw, db, dc, dh_, dw, inv_c,
                       STATS_GRAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """dh = g + dL/du * ca (+ d(sum) + d(max) * [h == max] / ties, the channel statistics' share,
    when STATS_GRAD)."""
    b = tl.program_id(0)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    pmask = offs_p < HW
    cmask = offs_c < C
    m = pmask[:, None] & cmask[None, :]
    ca = tl.load(ca_ptr + b * C + offs_c, mask=cmask, other=0.0)
    g, h, du = _du_tile(g_ptr, h_ptr, ca, s_ptr, dpooled_ptr, pooled_ptr, pcnt_ptr, b, offs_p,
                        offs_c, pmask, m, HW, W, gb, gc, gh, gw, sb, sc, sh, sw, inv_c)
    dh = g + du * ca[None, :]
    if STATS_GRAD:
        chmax = tl.load(chmax_ptr + b * C + offs_c, mask=cmask, other=0.0)
        chcnt = tl.load(chcnt_ptr + b * C + offs_c, mask=cmask, other=1.0)
        dsum = tl.load(dsum_ptr + b * C + offs_c, mask=cmask, other=0.0)
        dmax = tl.load(dmax_ptr + b * C + offs_c, mask=cmask, other=0.0)
        at_max = (h == chmax[None, :]).to(tl.float32)
        dh += dsum[None, :] + (dmax / chcnt)[None, :] * at_max
    tl.store(dh_ptr + b * db + _pixel_offsets(offs_p, W, dh_, dw)[:, None] + offs_c[None, :] * dc,
             dh.to(dh_ptr.dtype.element_ty), mask=m)


# ------------------------------------------------------------------------------ launchers

def _grid_pc(B, HW, C):
    return lambda meta: (B, triton.cdiv(HW, meta["BLOCK_P"]), triton.cdiv(C, meta["BLOCK_C"]))


def channel_stats(h: torch.Tensor):
    """Per-channel sum, max and number of pixels tied at the max (float32, B x C each)."""
    B, C, H, W = h.shape
    f32 = dict(device=h.device, dtype=torch.float32)
    s, m, n = (torch.empty(B, C, **f32) for _ in range(3))
    _channel_stats_kernel[lambda meta: (B, triton.cdiv(C, meta["BLOCK_C"]))](
        h, s, m, n, C, H * W, W, *_strides(h))
    return s, m, n


def channel_gate(ch_sum, ch_max, fc1_weight, fc2_weight, hw: int):
    """ca (float32, B x C) from the per-channel sum and max."""
    B, C = ch_sum.shape
    R = fc1_weight.shape[0]
    ca = torch.empty_like(ch_sum)
    _channel_gate_kernel[(B,)](ch_sum, ch_max, fc1_weight.contiguous(), fc2_weight.contiguous(),
                               ca, C, R, 1.0 / hw, BLOCK_C=min(64, next_pow2(C, 16)),
                               BLOCK_R=next_pow2(R, 16))
    return ca


def spatial_gate(h: torch.Tensor, ca: torch.Tensor, sa_weight: torch.Tensor):
    """pooled (B x 2 x H x W), its max ties (B x H x W) and sa (B x H x W), float32."""
    B, C, H, W = h.shape
    HW = H * W
    f32 = dict(device=h.device, dtype=torch.float32)
    pooled = torch.empty(B, 2, H, W, **f32)
    pcnt = torch.empty(B, H, W, **f32)
    s = torch.empty(B, H, W, **f32)
    _pixel_pool_kernel[lambda meta: (B, triton.cdiv(HW, meta["BLOCK_P"]))](
        h, ca, pooled, pcnt, C, HW, W, *_strides(h), 1.0 / C)
    k = sa_weight.shape[-1]
    _spatial_gate_kernel[lambda meta: (B, triton.cdiv(HW, meta["BLOCK_P"]))](
        pooled, sa_weight.contiguous(), s, H, W, HW, K=k)
    return pooled, pcnt, s


def gates(h, fc1_weight, fc2_weight, sa_weight, stats=None):
    """Both gates and the statistics the backward needs: (ch_sum, ch_max, ch_cnt, ca, pooled,
    pixel_cnt, sa). stats: h's (ch_sum, ch_max, ch_cnt) when the producer of h already has them."""
    ch_sum, ch_max, ch_cnt = channel_stats(h) if stats is None else stats
    ca = channel_gate(ch_sum, ch_max, fc1_weight, fc2_weight, h.shape[2] * h.shape[3])
    return (ch_sum, ch_max, ch_cnt, ca, *spatial_gate(h, ca, sa_weight))


def forward(h, fc1_weight, fc2_weight, sa_weight):
    """out and the statistics the backward needs: (out, ch_sum, ch_max, ch_cnt, ca, pooled,
    pixel_cnt, sa)."""
    ch_sum, ch_max, ch_cnt, ca, pooled, pcnt, s = gates(h, fc1_weight, fc2_weight, sa_weight)
    return apply_gates(h, ca, s), ch_sum, ch_max, ch_cnt, ca, pooled, pcnt, s


def apply_gates(h, ca, s):
    """h * (ca * sa + 1), in h's dtype and memory format."""
    B, C, H, W = h.shape
    out = torch.empty_like(h)
    _apply_kernel[_grid_pc(B, H * W, C)](h, ca, s, out, C, H * W, W, *_strides(h), *_strides(out))
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


def backward(grad, h, fc1_weight, fc2_weight, sa_weight, ch_sum, ch_max, ch_cnt, ca, pooled,
             pcnt, s):
    """(dh, d fc1_weight, d fc2_weight, d sa_weight) from the saved statistics."""
    return _backward(grad, h, fc1_weight, fc2_weight, sa_weight, ch_sum, ch_max, ch_cnt, ca,
                     pooled, pcnt, s, stats_grad_to_input=True)[:4]


def backward_with_stats_grad(grad, h, fc1_weight, fc2_weight, sa_weight, ch_sum, ch_max, ch_cnt,
                             ca, pooled, pcnt, s):
    """As backward, for statistics supplied by h's producer: dh leaves out their share and the
    gradients w.r.t. the channel average and max (float32, B x C) come back instead,
    (dh, d fc1, d fc2, d sa_weight, d avg, d max)."""
    return _backward(grad, h, fc1_weight, fc2_weight, sa_weight, ch_sum, ch_max, ch_cnt, ca,
                     pooled, pcnt, s, stats_grad_to_input=False)


def _backward(grad, h, fc1_weight, fc2_weight, sa_weight, ch_sum, ch_max, ch_cnt, ca, pooled,
              pcnt, s, stats_grad_to_input: bool):
    B, C, H, W = h.shape
    HW = H * W
    k = sa_weight.shape[-1]
    dlogit = torch.empty_like(s)
    _spatial_logit_grad_kernel[lambda meta: (B, triton.cdiv(HW, meta["BLOCK_P"]))](
        grad, h, ca, s, dlogit, C, HW, W, *_strides(grad), *_strides(h))

    dpooled = torch.empty_like(pooled)
    # one row of conv-weight partials per program; a fixed BLOCK_P so that every row is
    # rewritten on every launch (autotuning only the warps)
    n_blocks = triton.cdiv(HW, _CONV_GRAD_BLOCK_P)
    dw_part = torch.empty(B * n_blocks, 2 * k * k, device=h.device, dtype=torch.float32)
    _spatial_conv_grad_kernel[(B, n_blocks)](dlogit, pooled, sa_weight.contiguous(), dpooled,
                                             dw_part, H, W, HW, K=k, BLOCK_P=_CONV_GRAD_BLOCK_P)
    dsa = dw_part.sum(0).view(1, 2, k, k)

    dca = torch.empty_like(ca)
    _channel_gate_grad_kernel[lambda meta: (B, triton.cdiv(C, meta["BLOCK_C"]))](
        grad, h, ca, s, dpooled, pooled, pcnt, dca, C, HW, W, *_strides(grad), *_strides(h),
        1.0 / C)

    davg, dmax, dw1, dw2 = _gate_mlp_backward(dca, ca, ch_sum / HW, ch_max, fc1_weight, fc2_weight)
    dh = torch.empty_like(h)
    _input_grad_kernel[_grid_pc(B, HW, C)](
        grad, h, ca, s, dpooled, pooled, pcnt, ch_max, ch_cnt, (davg / HW).contiguous(),
        dmax.contiguous(), dh, C, HW, W, *_strides(grad), *_strides(h), *_strides(dh), 1.0 / C,
        STATS_GRAD=stats_grad_to_input)
    return (dh, dw1.view_as(fc1_weight).to(fc1_weight.dtype),
            dw2.view_as(fc2_weight).to(fc2_weight.dtype), dsa.to(sa_weight.dtype), davg, dmax)
