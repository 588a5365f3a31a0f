// CPU kernel of the whole eval-mode MBCSA block (expansion > 1) from BN-folded weights, one
// image at a time (each pass split over the thread pool):
//   e = GELU(x[::s, ::s] We^T + be)           GEMM, GELU fused per row block
//   d = GELU(dwconv(e, Wd) + bd)               one pass, with per-channel sum / max of d
//   h = d * (ca * sa + 1)                      attention gates and residual, per row block, then
//   out = shortcut(x) + bp + h Wp^T            the project GEMM accumulating into out
// The GEMMs multiply in bfloat16 when x is bfloat16 (oneDNN accumulates in float32; AVX512-BF16
// or AMX doubles its multiply-add rate), else in float32; their products are widened to float32
// for the bias, GELU, depthwise pass, gates and residual, as in every other CPU kernel.
#include <ATen/ThreadLocalState.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/max_pool2d.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include "cpu/activations.h"
#include "cpu/channel_spatial_gates.h"
#include "cpu/dwconv.h"
#include "cpu/pixel_chunks.h"
#include "cpu/scratch.h"
#include "mbcsa_checks.h"

namespace hdkd::cpu {
namespace {

using at::Tensor;

constexpr int64_t kRows = 512;  // GEMM row block: its activations stay in cache for the epilogue

// x (B x C x H x W, channels_last) as the (B*H*W) x C matrix of its pixels.
Tensor pixel_rows(const Tensor& x) {
  return x.permute({0, 2, 3, 1}).reshape({x.size(0) * x.size(2) * x.size(3), x.size(1)});
}

using BF16 = c10::BFloat16;

inline Vec load_float(const float* p) { return Vec::loadu(p); }
inline Vec load_float(const BF16* p) {
  Vec v;
  at::vec::load_to_float(p, v);
  return v;
}

// dst[r, c] = GELU(src[r, c] + bias[c]) for rows x C values (dst may be src).
template <typename T>
void bias_gelu(const T* src, const float* bias, int64_t rows, int64_t C, float* dst) {
  for (int64_t r = 0; r < rows; ++r, src += C, dst += C) {
    int64_t c = 0;
    for (; c + kVec <= C; c += kVec)
      gelu(load_float(src + c) + Vec::loadu(bias + c)).store(dst + c);
    for (; c < C; ++c) dst[c] = gelu(float(src[c]) + bias[c]);
  }
}

// dst[r, c] += bias[c] for rows x C values.
void add_bias(const float* bias, int64_t rows, int64_t C, float* dst) {
  for (int64_t r = 0; r < rows; ++r, dst += C) {
    int64_t c = 0;
    for (; c + kVec <= C; c += kVec) (Vec::loadu(dst + c) + Vec::loadu(bias + c)).store(dst + c);
    for (; c < C; ++c) dst[c] += bias[c];
  }
}

// gate_pixel's h * (ca * s + 1) for one pixel, rounded to bfloat16.
void gate_pixel_bf16(const float* h, const float* ca, float s, int64_t C, BF16* out) {
  const Vec vs(s), one(1.f);
  const auto gated = [&](int64_t c) {
    return Vec::loadu(h + c) * at::vec::fmadd(Vec::loadu(ca + c), vs, one);
  };
  int64_t c = 0;
  for (; c + 2 * kVec <= C; c += 2 * kVec)
    at::vec::convert_from_float<BF16>(gated(c), gated(c + kVec)).store(out + c);
  for (; c < C; ++c) out[c] = BF16(h[c] * (ca[c] * s + 1.f));
}

// out[r, c] = bfloat16(res[r, c] + prod[r, c] + bias[c]) for rows x C values: the block's output
// from its shortcut and its project GEMM, rounded once.
void residual_bf16(const BF16* res, const BF16* prod, const float* bias, int64_t rows, int64_t C,
                   BF16* out) {
  const auto sum = [&](int64_t c) {
    return load_float(res + c) + load_float(prod + c) + Vec::loadu(bias + c);
  };
  for (int64_t r = 0; r < rows; ++r, res += C, prod += C, out += C) {
    int64_t c = 0;
    for (; c + 2 * kVec <= C; c += 2 * kVec)
      at::vec::convert_from_float<BF16>(sum(c), sum(c + kVec)).store(out + c);
    for (; c < C; ++c) out[c] = BF16(float(res[c]) + float(prod[c]) + bias[c]);
  }
}

// fn calls ATen ops (mm, addmm) on the pool's threads: they run under the caller's thread-local
// state (InferenceMode, grad mode, autocast exclusion), which at::parallel_for does not pass on;
// without it an in-place op on an inference tensor fails on every thread but the caller's.
// Blocks of at most kRows rows, equal in size and as many as a multiple of the threads, so that
// no thread waits on another's extra block.
template <class F>
void for_row_blocks(int64_t rows, const F& fn) {
  const at::ThreadLocalState caller;
  const int64_t threads = at::get_num_threads();
  const int64_t blocks = ((rows + kRows - 1) / kRows + threads - 1) / threads * threads;
  const int64_t size = (rows + blocks - 1) / blocks;
  at::parallel_for(0, (rows + size - 1) / size, 1, [&](int64_t b0, int64_t b1) {
    const at::ThreadLocalStateGuard guard(caller);
    for (int64_t i = b0; i < b1; ++i) fn(i * size, std::min(rows, (i + 1) * size));
  });
}

Tensor mbcsa_eval(const Tensor& x_in, const Tensor& expand_w, const Tensor& expand_b,
                  const Tensor& dw_w, const Tensor& dw_b, const Tensor& fc1, const Tensor& fc2,
                  const Tensor& sa_w, const Tensor& project_w, const Tensor& project_b,
                  const std::optional<Tensor>& shortcut_in) {
  const NoAutocast no_autocast;
  check_mbcsa_eval("hdkd::mbcsa_eval", x_in, expand_w, expand_b, dw_w, dw_b, fc1, fc2, sa_w,
                   project_w, project_b, shortcut_in);
  const int64_t B = x_in.size(0), cin = x_in.size(1), hid = expand_w.size(0),
                cout = project_w.size(0), k = dw_w.size(-1);
  const bool down = given(shortcut_in);

  // x and the GEMM weights in the GEMMs' dtype (x itself when it is that dtype and channels_last)
  const auto gemm_dtype = x_in.scalar_type() == at::kBFloat16 ? at::kBFloat16 : at::kFloat;
  const bool bf16 = gemm_dtype == at::kBFloat16;
  const Tensor x = x_in.to(gemm_dtype, false, false, at::MemoryFormat::ChannelsLast)
                       .contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t He = down ? (x.size(2) + 1) / 2 : x.size(2),
                We = down ? (x.size(3) + 1) / 2 : x.size(3);
  const Dims d{B, hid, He, We, He * We};
  const Dims one{1, hid, d.H, d.W, d.P};  // the per-image passes below
  Scratch scratch;
  // One image at a time: its hidden-width buffers (P x hidden each) are reused for every image,
  // so they stay in the last-level cache between the passes, and kept between calls (Scratch),
  // so that no call page-faults them in afresh. In bfloat16, `low` takes the expand GEMM's
  // product and then the gated h as the project GEMM's operand, and `prod` the project GEMM's
  // product; in float32 the expand GEMM writes e and the project GEMM accumulates into out.
  Tensor e = scratch.matrix(d.P, hid, at::kFloat), dbuf = scratch.matrix(d.P, hid, at::kFloat);
  Tensor low, prod;
  if (bf16) {
    low = scratch.matrix(d.P, hid, at::kBFloat16);
    prod = scratch.matrix(d.P, cout, at::kBFloat16);
  }
  // The expand GEMM's rows: x's pixels, or every other pixel of every other row of x.
  Tensor xrows = pixel_rows(x);
  if (down) {
    xrows = scratch.matrix(B * d.P, cin, gemm_dtype);
    xrows.view({B, He, We, cin})
        .copy_(x.permute({0, 2, 3, 1}).slice(1, 0, x.size(2), 2).slice(2, 0, x.size(3), 2));
  }
  const auto opts = at::TensorOptions().dtype(at::kFloat);

  const Tensor we_t = expand_w.to(gemm_dtype).contiguous().view({hid, cin}).t();
  const Tensor be = float_contig(expand_b);
  const float* bep = be.data_ptr<float>();
  const Tensor wt = tap_major(dw_w), bd = float_contig(dw_b);
  const Tensor saw = float_contig(sa_w);
  const Tensor wp_t = project_w.to(gemm_dtype).contiguous().view({cout, hid}).t();
  const Tensor bp = float_contig(project_b);
  const float* bpp = bp.data_ptr<float>();

  // The shortcut's rows: x itself, or its max-pooled projection. In float32, out starts as the
  // shortcut and the project GEMM accumulates into it; in bfloat16, each row of out is written
  // once, from the shortcut, bp and the project GEMM's product.
  Tensor shortcut = xrows;
  if (down) {
    const Tensor pooled = pixel_rows(
        at::max_pool2d(x, {3, 3}, {2, 2}, {1, 1}).contiguous(at::MemoryFormat::ChannelsLast));
    const Tensor ws_t = shortcut_in->to(gemm_dtype).contiguous().view({cout, cin}).t();
    if (bf16) {
      shortcut = scratch.matrix(B * d.P, cout, gemm_dtype);
      at::mm_out(shortcut, pooled, ws_t);
    } else {
      shortcut = at::mm(pooled, ws_t);
    }
  }
  Tensor out = bf16 ? at::empty({B * d.P, cout}, opts.dtype(at::kBFloat16))
                    : (down ? shortcut : shortcut.clone());

  Tensor sum = at::empty({1, hid}, opts), mx = at::empty({1, hid}, opts);
  const Tensor w1 = float_contig(fc1), w2 = float_contig(fc2);
  Tensor gate_hidden = at::empty({w1.size(0)}, opts), ca = at::empty({hid}, opts);
  float *sump = sum.data_ptr<float>(), *cap = ca.data_ptr<float>();
  Tensor pooled = at::empty({1, 2, d.H, d.W}, opts), sa = at::empty({1, d.P}, opts);
  ChannelPartials parts(chunks_per_image(d.P), hid);
  float* ep = e.data_ptr<float>();
  float* dp = dbuf.data_ptr<float>();
  const float* sap = sa.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t base = b * d.P;
    // Expand GEMM + bias + GELU.
    for_row_blocks(d.P, [&](int64_t r0, int64_t r1) {
      Tensor blk = (bf16 ? low : e).slice(0, r0, r1);
      at::mm_out(blk, xrows.slice(0, base + r0, base + r1), we_t);
      if (bf16)
        bias_gelu(blk.data_ptr<BF16>(), bep, r1 - r0, hid, ep + r0 * hid);
      else
        bias_gelu(blk.data_ptr<float>(), bep, r1 - r0, hid, ep + r0 * hid);
    });

    // Depthwise conv + bias + GELU with the channel statistics, then the two gates.
    dwconv_affine_gelu(ep, wt.data_ptr<float>(), nullptr, bd.data_ptr<float>(), k, one,
                       at::kFloat, dp, parts);
    parts.combine(1, chunks_per_image(d.P), sump, mx.data_ptr<float>(), nullptr);
    for (int64_t c = 0; c < hid; ++c) sump[c] *= 1.f / float(d.P);
    channel_gate_image(sump, mx.data_ptr<float>(), w1.data_ptr<float>(),
                       w2.data_ptr<float>(), w1.size(0), hid, gate_hidden.data_ptr<float>(), cap);
    channel_pool(dp, cap, one, pooled.data_ptr<float>(), nullptr);
    spatial_gate(pooled.data_ptr<float>(), saw.data_ptr<float>(), saw.size(-1), one,
                 sa.data_ptr<float>());

    // Per row block: the gates, then out = shortcut + bp + h Wp^T.
    for_row_blocks(d.P, [&](int64_t r0, int64_t r1) {
      if (bf16) {
        BF16* hp = low.data_ptr<BF16>();
        for (int64_t r = r0; r < r1; ++r)
          gate_pixel_bf16(dp + r * hid, cap, sap[r], hid, hp + r * hid);
        Tensor pblk = prod.slice(0, r0, r1);
        at::mm_out(pblk, low.slice(0, r0, r1), wp_t);
        residual_bf16(shortcut.data_ptr<BF16>() + (base + r0) * cout, pblk.data_ptr<BF16>(), bpp,
                      r1 - r0, cout, out.data_ptr<BF16>() + (base + r0) * cout);
      } else {
        for (int64_t r = r0; r < r1; ++r) gate_pixel(dp + r * hid, cap, sap[r], hid, dp + r * hid);
        add_bias(bpp, r1 - r0, cout, out.data_ptr<float>() + (base + r0) * cout);
        out.slice(0, base + r0, base + r1).addmm_(dbuf.slice(0, r0, r1), wp_t);
      }
    });
  }
  const Tensor result = out.view({B, d.H, d.W, cout}).permute({0, 3, 1, 2});
  return like_input(result, x_in);
}

}  // namespace

TORCH_LIBRARY_IMPL(hdkd, CPU, m) { m.impl("mbcsa_eval", &mbcsa_eval); }

}  // namespace hdkd::cpu
