"""Triton channel-spatial attention (CBAM with residual) against the float64 reference."""
import zlib

import pytest
import torch

from triton_env import (DEVICE, INTERPRET, cuda_only, leaf, no_tf32,  # noqa: F401
                        requires_triton)
from helpers import REL_TOL, layout, rel_err

import hdkd
from hdkd.ops import reference
from max_ties import check_attention_ties

pytestmark = [requires_triton, pytest.mark.usefixtures("no_tf32")]

# (B, C, H, W): batch 1, channels not multiples of 8, H and W not multiples of any block
SMALL = [((1, 5, 3, 5), torch.float32, "contiguous"),
         ((2, 20, 7, 6), torch.float32, "channels_last"),
         ((2, 12, 9, 9), torch.float32, "strided"),
         ((2, 20, 7, 6), torch.bfloat16, "contiguous"),
         ((1, 12, 9, 9), torch.bfloat16, "channels_last"),
         ((2, 12, 7, 6), torch.float16, "strided")]
REALISTIC = [((8, 384, 56, 56), torch.bfloat16, "channels_last"),
             ((4, 768, 28, 28), torch.float32, "contiguous"),
             ((3, 200, 13, 17), torch.float16, "strided")]


def _inputs(shape, dtype, kind, gen_h=None):
    B, C, H, W = shape
    r = max(C // 16, 1)
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype, kind)).encode()))
    h = gen_h(g) if gen_h else torch.randn(*shape, generator=g)
    tensors = [h, torch.randn(r, C, 1, 1, generator=g) * 0.5,
               torch.randn(C, r, 1, 1, generator=g) * 0.5, torch.randn(1, 2, 7, 7, generator=g) * 0.2]
    pairs = [leaf(t.to(DEVICE), dtype, kind if i == 0 else "contiguous") for i, t in enumerate(tensors)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _check(shape, dtype, kind, gen_h=None):
    fast, ref = _inputs(shape, dtype, kind, gen_h)
    out = hdkd.ops.channel_spatial_attention(*fast, backend="triton")
    expect = reference.channel_spatial_attention(*ref)
    assert out.dtype == dtype and out.shape == expect.shape
    assert rel_err(out, expect) < REL_TOL[dtype]
    grad = torch.randn(expect.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    out.backward(layout(grad.to(dtype), kind))
    expect.backward(grad.to(dtype).double())
    for name, a, b in zip(("h", "fc1", "fc2", "sa"), fast, ref):
        assert a.grad.dtype == a.dtype, name
        assert rel_err(a.grad, b.grad) < REL_TOL[dtype], name


@pytest.mark.parametrize("shape,dtype,kind", SMALL)
def test_forward_backward_small(shape, dtype, kind):
    _check(shape, dtype, kind)


@cuda_only
@pytest.mark.parametrize("shape,dtype,kind", REALISTIC)
def test_forward_backward_realistic(shape, dtype, kind):
    _check(shape, dtype, kind)


@pytest.mark.parametrize("shape", [(2, 6, 5, 4), (1, 20, 9, 7)])
def test_max_ties_split_the_gradient_like_amax(shape):
    """Integer-valued inputs put several pixels at each channel's max and several channels at
    each pixel's max; torch.amax splits the gradient evenly among them. (1, 20, 9, 7) spans more
    than one pixel tile and one channel tile, so ties are counted across loop iterations."""
    _check(shape, torch.float32, "contiguous",
           gen_h=lambda g: torch.randint(-2, 3, shape, generator=g).float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_tie_case(dtype):
    check_attention_ties(lambda *a: hdkd.ops.channel_spatial_attention(*a, backend="triton"),
                         dtype, DEVICE, lambda t: layout(t, "channels_last"))


def test_cbam_module_and_autocast():
    torch.manual_seed(0)
    m = hdkd.nn.CBAM(20, backend="triton").to(DEVICE)
    ref = hdkd.nn.CBAM(20, backend="torch").to(DEVICE).double()
    ref.load_state_dict(m.state_dict())
    h = torch.randn(2, 20, 7, 6, device=DEVICE)
    expect = ref(h.double())
    assert rel_err(m(h), expect) < REL_TOL[torch.float32]
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out = m(h)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, expect) < REL_TOL[torch.bfloat16]


def test_runs_through_the_interpreter_on_cpu_tensors():
    if not INTERPRET:
        pytest.skip("interpreter run")
    assert "cpu" in hdkd.ops.backends_registry()["triton"].devices()
    out = hdkd.ops.channel_spatial_attention(*_inputs((1, 5, 3, 5), torch.float32, "contiguous")[0],
                                             backend="triton")
    assert out.device.type == "cpu"
