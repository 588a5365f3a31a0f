"""ConvBNGELU: the stem block (conv k x k -> BN -> GELU)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.backends import get_backend, validate_backend_name
from ..ops.checks import check_activation
from ..ops.measured import compute_dtype
from ..ops.reference import BatchNormState, fold_conv_batch_norm
from ._validate import odd_kernel, positive_int
from .eval_cache import EvalCache, records_grad
from .eval_plan import EvalPlan, input_key, may_plan


class ConvBNGELU(nn.Module):
    """Conv k x k (stride 2 when downsample, padding k//2, no bias) -> BatchNorm2d -> GELU.

    An eval forward without gradients runs one convolution with the BN folded into its weight
    and bias (folded once, cached until a parameter or buffer changes) and the GELU fused into
    it (oneDNN's post-op on the CPU), in channels_last; the next such forward on an input like
    the last runs it without checking again (hdkd.nn.eval_plan). backend="torch" (module or
    process-wide) keeps the three separate reference ops."""

    def __init__(self, inp: int, oup: int, kernel_size: int = 3, downsample: bool = False,
                 backend: str = "auto"):
        super().__init__()
        positive_int("ConvBNGELU", "inp", inp)
        positive_int("ConvBNGELU", "oup", oup)
        odd_kernel("ConvBNGELU", "kernel_size", kernel_size)
        self.backend = validate_backend_name(backend)
        self.conv = nn.Conv2d(inp, oup, kernel_size, 2 if downsample else 1, kernel_size // 2,
                              bias=False)
        self.norm = nn.BatchNorm2d(oup)
        self.folded_cache = EvalCache()
        self.eval_plan = EvalPlan()

    def forward(self, x: Tensor) -> Tensor:
        planned = may_plan(self, x)
        if planned:
            key = (*input_key(x), self.backend, get_backend(), self.norm.eps)
            run = self.eval_plan.get(self, key)
            if run is not None:
                return run(x)
        check_activation("ConvBNGELU", "input", x, channels=self.conv.in_channels)
        if self._reference_path(x):
            return F.gelu(self.norm(self.conv(x)))
        n = self.norm
        bn = BatchNormState(n.weight, n.bias, n.running_mean, n.running_var)
        weight, bias = self.folded_cache.get(
            [self.conv.weight, *bn],
            lambda: fold_conv_batch_norm(self.conv.weight.float(),
                                         BatchNormState(*(t.float() for t in bn)), n.eps),
            extra=(n.eps,))
        run = conv_gelu_runner(x, weight, bias, self.conv.stride, self.conv.padding)
        if planned:
            self.eval_plan.set(self, key, run)
        return run(x)

    def _reference_path(self, x: Tensor) -> bool:
        name = self.backend if self.backend != "auto" else get_backend()
        # torch.jit tracing is how fvcore counts FLOPs: it must see the reference's ops
        if self.training or name == "torch" or x.dtype == torch.float64 or torch.jit.is_tracing():
            return True
        return records_grad(self, x)


# Read once: dynamo cannot trace torch.backends.mkldnn.is_available(), and calling it in
# conv_gelu broke a compiled model's graph at every stem block. hdkd.nn.packed_linear uses it too.
MKLDNN = torch.backends.mkldnn.is_available()


def conv_gelu(x: Tensor, weight: Tensor, bias: Tensor, stride, padding) -> Tensor:
    """GELU(conv2d(x, weight, bias)) in channels_last; float32 weight and bias.

    On the CPU, in float32 or bfloat16 (under autocast or bfloat16 input), one oneDNN
    convolution with the GELU as its post-op. Its bias is cast too: inductor's lowering of the
    op returns the bias's dtype, so a float32 bias would make a compiled model run on in
    float32."""
    return conv_gelu_runner(x, weight, bias, stride, padding)(x)


def conv_gelu_runner(x: Tensor, weight: Tensor, bias: Tensor, stride,
                     padding) -> Callable[[Tensor], Tensor]:
    """conv_gelu as a callable on x, and on any input with x's dtype and device under the same
    autocast setting, with the weight and bias cast once."""
    dtype = compute_dtype(x)
    if (x.device.type == "cpu" and dtype in (torch.float32, torch.bfloat16)
            and MKLDNN and not torch.compiler.is_exporting()):
        weight, bias = weight.to(dtype), bias.to(dtype)
        padding, stride = list(padding), list(stride)
        return lambda t: torch.ops.mkldnn._convolution_pointwise(
            t.contiguous(memory_format=torch.channels_last).to(dtype), weight, bias, padding,
            stride, [1, 1], 1, "gelu", [], "none")
    if not torch.is_autocast_enabled(x.device.type):
        weight, bias = weight.to(x.dtype), bias.to(x.dtype)
    return lambda t: F.gelu(F.conv2d(t.contiguous(memory_format=torch.channels_last), weight,
                                     bias, stride, padding))
