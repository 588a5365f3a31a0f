"""Triton channel-spatial attention: realistic shapes on a GPU, the module under autocast,
the interpreter on CPU tensors. The numerics on the shared grid (dtypes, layouts, ties) are in
tests/test_conformance.py."""
import zlib

import pytest
import torch

from triton_env import DEVICE, INTERPRET, cuda_only, no_tf32, requires_triton  # noqa: F401
from helpers import REL_TOL, layout, rel_err, twins

import hdkd
from hdkd.ops import reference

pytestmark = [requires_triton, pytest.mark.usefixtures("no_tf32")]

REALISTIC = [((8, 384, 56, 56), torch.bfloat16, "channels_last"),
             ((4, 768, 28, 28), torch.float32, "contiguous"),
             ((3, 200, 13, 17), torch.float16, "strided")]


def _inputs(shape, dtype, kind):
    B, C, H, W = shape
    r = max(C // 16, 1)
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype, kind)).encode()))
    tensors = [torch.randn(*shape, generator=g), torch.randn(r, C, 1, 1, generator=g) * 0.5,
               torch.randn(C, r, 1, 1, generator=g) * 0.5,
               torch.randn(1, 2, 7, 7, generator=g) * 0.2]
    return twins([t.double() for t in tensors], dtype, DEVICE, kind)


@cuda_only
@pytest.mark.parametrize("shape,dtype,kind", REALISTIC)
def test_forward_backward_realistic(shape, dtype, kind):
    fast, ref = _inputs(shape, dtype, kind)
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


def test_channel_spatial_attention_module_and_autocast():
    torch.manual_seed(0)
    m = hdkd.nn.ChannelSpatialAttention(20, backend="triton").to(DEVICE)
    ref = hdkd.nn.ChannelSpatialAttention(20, backend="torch").to(DEVICE).double()
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
