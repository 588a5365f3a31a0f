// CUDA path of the whole eval-mode MBCSA block (expansion > 1) from BN-folded weights, in the
// input's dtype (the 1x1 convs are cuBLAS GEMMs on the pixel rows of channels_last buffers):
//   e = GELU(x[::s, ::s] We^T + be)             GEMM, then GELU in place
//   d = GELU(dwconv(e, Wd) + bd)                 the depthwise kernel, with the channel stats
//                                                of d as stored (as the other backends)
//   ca, sa                                       the attention gates (sa from one pass over d)
//   out = shortcut(x) + bp + (d * (ca * sa + 1)) Wp^T
// The gates are folded into the project GEMM instead of being applied to d: per pixel,
//   (d * (ca * sa + 1)) Wp^T = sa * (d (Wp diag ca)^T) + d Wp^T,
// so one batched GEMM of each image's d against [diag(ca) Wp^T | Wp^T] (hidden x 2 cout) reads
// d once, and d is never rewritten; a last kernel combines the two halves with sa, the bias and
// the shortcut.
#include <ATen/ops/addmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/max_pool2d.h>
#include <ATen/ops/mm.h>

#include "channel_gate.h"
#include "cuda/channel_spatial_gates.cuh"
#include "cuda/dwconv.cuh"
#include "mbcsa_checks.h"

namespace hdkd::cuda {
namespace {

// x (B x C x H x W, channels_last dense) as the (B*H*W) x C matrix of its pixels (a view).
Tensor pixel_rows(const Tensor& x) {
  return x.permute({0, 2, 3, 1}).reshape({x.size(0) * x.size(2) * x.size(3), x.size(1)});
}

Tensor mbcsa_eval(const Tensor& x_in, const Tensor& expand_w, const Tensor& expand_b,
                  const Tensor& dw_w, const Tensor& dw_b, const Tensor& fc1, const Tensor& fc2,
                  const Tensor& sa_w, const Tensor& project_w, const Tensor& project_b,
                  const std::optional<Tensor>& shortcut_in) {
  const char* op = "hdkd::mbcsa_eval";
  check_mbcsa_eval(op, x_in, expand_w, expand_b, dw_w, dw_b, fc1, fc2, sa_w, project_w, project_b,
                   shortcut_in);
  const int64_t B = x_in.size(0), cin = x_in.size(1), hid = expand_w.size(0),
                cout = project_w.size(0);
  const bool down = given(shortcut_in);
  TORCH_CHECK(x_in.size(2) * x_in.size(3) > 0, op,
              ": expected x with at least one pixel, got shape ", x_in.sizes());
  const OpScope scope(x_in);
  const auto dtype = x_in.scalar_type();
  auto matrix = [&](const Tensor& w, int64_t rows, int64_t cols) {
    return w.to(dtype).reshape({rows, cols}).t();
  };

  const Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const Tensor xe = down ? x.slice(2, 0, x.size(2), 2).slice(3, 0, x.size(3), 2)
                               .contiguous(at::MemoryFormat::ChannelsLast)
                         : x;
  const int64_t He = xe.size(2), We = xe.size(3);
  const Tensor xrows = pixel_rows(xe);

  Tensor e = at::addmm(expand_b.to(dtype), xrows, matrix(expand_w, hid, cin));
  at::gelu_(e);
  const Tensor e4 = e.view({B, He, We, hid}).permute({0, 3, 1, 2});
  Tensor d = at::empty({B, hid, He, We}, x.options(), at::MemoryFormat::ChannelsLast);
  const ChannelStats stats =
      dwconv_gelu_and_stats(e4, dw_w, Tensor(), dw_b.to(at::kFloat).contiguous(), d);
  const Tensor ca = channel_gate(stats.sum.div(double(He * We)), stats.max, fc1, fc2);
  const Tensor sa = spatial_gate(channel_pool(d, ca, nullptr), sa_w);

  const int64_t P = He * We;
  const Tensor wp = matrix(project_w, cout, hid);  // hid x cout
  const Tensor gated = ca.unsqueeze(2).mul(wp.to(at::kFloat).unsqueeze(0));  // B x hid x cout
  const Tensor halves = at::bmm(d.permute({0, 2, 3, 1}).reshape({B, P, hid}),
                                at::cat({gated.to(dtype), wp.unsqueeze(0).expand({B, hid, cout})},
                                        2));  // B x P x 2 cout
  const Tensor shortcut = down ? at::mm(pixel_rows(at::max_pool2d(x, {3, 3}, {2, 2}, {1, 1})
                                                       .contiguous(at::MemoryFormat::ChannelsLast)),
                                        matrix(*shortcut_in, cout, cin))
                               : xrows.contiguous();  // B*P x cout
  const Tensor bias = project_b.to(at::kFloat).contiguous();
  Tensor out = at::empty({B * P, cout}, x.options());
  HDKD_DISPATCH(dtype, "hdkd_mbcsa_eval_out", [&] {
    const scalar_t *yp = halves.data_ptr<scalar_t>(), *sp = shortcut.data_ptr<scalar_t>();
    const float *bp = bias.data_ptr<float>(), *sap = sa.data_ptr<float>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const Divisor by_cout(cout);
    for_each_index(B * P * cout, [=] HDKD_HOST_DEVICE(int64_t i) {
      int64_t q, o;
      by_cout.divmod(i, q, o);
      const int64_t row = q * 2 * cout;
      const float v = static_cast<float>(sp[i]) + bp[o] +
                      sap[q] * static_cast<float>(yp[row + o]) +
                      static_cast<float>(yp[row + cout + o]);
      op[i] = static_cast<scalar_t>(v);
    });
  });
  const Tensor result = out.view({B, He, We, cout}).permute({0, 3, 1, 2});
  return wants_channels_last(x_in) ? result : result.contiguous();
}

}  // namespace

HDKD_CUDA_IMPL(m) { m.impl("mbcsa_eval", &mbcsa_eval); }

}  // namespace hdkd::cuda
