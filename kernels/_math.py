"""Helpers shared by the kernels: element-wise math (all in float32), the running max with its
ties, and tile indexing."""
import triton
import triton.language as tl

_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def gelu(x):
    """Exact (erf) GELU."""
    return 0.5 * x * (1.0 + tl.erf(x * _SQRT1_2))


@triton.jit
def gelu_grad(x):
    """d GELU(x) / dx."""
    return 0.5 * (1.0 + tl.erf(x * _SQRT1_2)) + x * _INV_SQRT_2PI * tl.exp(-0.5 * x * x)


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def add_max_ties(run_max, run_ties, values):
    """Element-wise running max and the number of values equal to it, for loops that reduce
    across threads only once at the end (reduce_max_ties) instead of per tile. `values` holds
    -inf where masked; a NaN makes its slot's max NaN with no ties."""
    new_max = tl.maximum(run_max, values, propagate_nan=tl.PropagateNan.ALL)
    hits = (values == new_max).to(tl.float32)
    return new_max, tl.where(run_max == new_max, run_ties, 0.0) + hits


@triton.jit
def reduce_max_ties(run_max, run_ties, axis: tl.constexpr):
    """The max along `axis` of add_max_ties' slots and the ties at it (NaN anywhere: NaN)."""
    has_nan = tl.max((run_max != run_max).to(tl.int32), axis) > 0
    total_max = tl.where(has_nan, float("nan"), tl.max(run_max, axis))
    if axis == 0:
        hits = tl.sum(tl.where(run_max == total_max[None, :], run_ties, 0.0), 0)
    else:
        hits = tl.sum(tl.where(run_max == total_max[:, None], run_ties, 0.0), 1)
    return total_max, hits


@triton.jit
def tile(P, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's [BLOCK_P pixels, BLOCK_C channels] tile on a (batch, pixel blocks, channel
    blocks) grid over P pixels and C channels: (b, offs_p, offs_c, pmask, cmask)."""
    b = tl.program_id(0)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    return b, offs_p, offs_c, offs_p < P, offs_c < C


@triton.jit
def pixel_offsets(offs_p, W, stride_y, stride_x):
    """Where the pixels offs_p (flat indices in a W-wide image) are, given the row and column
    strides."""
    return (offs_p // W) * stride_y + (offs_p % W) * stride_x
