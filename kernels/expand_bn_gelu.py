"""The MBCSA expand stage, e = GELU(BN(conv1x1(z, W, stride))), as one GEMM pass each way.

The 1x1 conv is linear, so the batch statistics of its output v = W z follow from those of its
(cin-wide, 4x narrower) input: mean_v = W mean_z and var_v[n] = w_n^T Cov(z) w_n. BN then folds
into the GEMM (W' = scale * W, bias shift) and GELU runs in its epilogue: the hidden-wide v and
the BN output are never stored, and only z is saved for the backward.

Backward, with da = dL/d(BN output) = ge * GELU'(a) (one GEMM recomputing a, written once) and
v = W z on the sampled pixels p (N of them):
  dbeta = sum_p da,  dgamma = r (sum_p da v - mean dbeta), where sum_p da v = rowsum(G o W), G = da^T z
  dv = c1 da + c2 (v - mean_v) + c0 per channel (train: through the batch mean and variance;
       eval: c2 = c0 = 0), and v - mean_v = W zc with zc = z - mean_z, so
  dW = c1 o G + c2 o (W zc^T zc) + c0 zsum^T          (zc^T zc is cin x cin)
  dz = da (c1 o W) + zc (W^T diag(c2) W) + c0^T W     (at the sampled pixels, zero elsewhere)
so the only hidden-wide traffic is reading ge and writing then reading da twice.
"""
from __future__ import annotations

import torch

from hdkd.ops.rules import conv_out_hw

from .pointwise_conv import pointwise_conv


def _sampled(z: torch.Tensor, stride: int) -> torch.Tensor:
    """The pixels the strided 1x1 conv reads, as a (pixels x cin) float32 matrix."""
    zs = z[:, :, ::stride, ::stride]
    return zs.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()


def batch_stats(z, weight, stride: int):
    """Mean and biased / unbiased variance of conv1x1(z, weight, stride), per output channel,
    from the mean and covariance of z (float32)."""
    zf = _sampled(z, stride)
    n = zf.shape[0]
    w = weight.flatten(1).float()
    mean_z = zf.mean(0)
    zc = zf - mean_z
    cov = zc.t() @ zc / n
    var = ((w @ cov) * w).sum(1).clamp_min(0)
    return w @ mean_z, var, var * n / max(n - 1, 1)


def _folded(weight, gamma, beta, mean, rstd):
    w = weight.flatten(1).float()
    scale = gamma.float() * rstd
    return w * scale[:, None], beta.float() - mean * scale


def forward(z, weight, gamma, beta, mean, rstd, stride: int):
    """e = GELU(BN(conv1x1(z))) with BN given as (mean, 1/std, gamma, beta), in z's dtype,
    channels_last."""
    w, b = _folded(weight, gamma, beta, mean, rstd)
    Ho, Wo = conv_out_hw(z, 1, stride)
    e = torch.empty(z.shape[0], w.shape[0], Ho, Wo, device=z.device, dtype=z.dtype,
                    memory_format=torch.channels_last)
    return pointwise_conv(z, w, b, (Ho, Wo), in_stride=stride, gelu_out=True, out=e)


def backward(ge, z, weight, gamma, beta, mean, rstd, training: bool, stride: int):
    """(dz, d weight, d gamma, d beta)."""
    w_fold, b_fold = _folded(weight, gamma, beta, mean, rstd)
    Ho, Wo = conv_out_hw(z, 1, stride)
    hidden, cin = w_fold.shape
    da = torch.empty(z.shape[0], hidden, Ho, Wo, device=z.device, dtype=z.dtype,
                     memory_format=torch.channels_last)
    pointwise_conv(z, w_fold, b_fold, (Ho, Wo), in_stride=stride, gelu_grad_of=ge, out=da)
    da = da.permute(0, 2, 3, 1).reshape(-1, hidden)  # a view: da is channels_last
    zf = _sampled(z, stride)
    n = zf.shape[0]
    w = weight.flatten(1).float()

    dbeta = da.sum(0, dtype=torch.float32)
    g = (da.t() @ zf.to(da.dtype)).float()
    dgamma = rstd * ((g * w).sum(1) - mean * dbeta)
    c1 = gamma.float() * rstd
    dweight = c1[:, None] * g
    dz_sampled = (da @ (c1[:, None] * w).to(da.dtype)).float()
    if training:  # dv += c2 * (v - mean_v) + c0, written with the centred zc = z - mean_z
        c2 = -c1 * rstd * dgamma / n
        c0 = -c1 * dbeta / n
        zc = zf - zf.mean(0)
        dweight += c2[:, None] * (w @ (zc.t() @ zc)) + c0[:, None] * zf.sum(0)
        dz_sampled += zc @ (w.t() @ (c2[:, None] * w)) + c0 @ w
    dz = torch.zeros_like(z)
    dz[:, :, ::stride, ::stride] = dz_sampled.view(z.shape[0], Ho, Wo, cin).permute(0, 3, 1, 2)
    return (dz, dweight.view_as(weight).to(weight.dtype), dgamma.to(gamma.dtype),
            dbeta.to(beta.dtype))
