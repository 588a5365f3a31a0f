"""The triton backend's registry entry, its torch.library custom ops (opcheck: schema, fake
implementation, autograd registration) and torch.compile(fullgraph=True) through them."""
import pytest
import torch

from triton_env import DEVICE, INTERPRET, ON_CUDA, no_tf32, requires_triton  # noqa: F401
from helpers import rel_err

import hdkd
from hdkd.ops import backends_registry, resolve
from hdkd.ops import triton as hdkd_triton
from hdkd.ops.op_table import OP_NAMES
from hdkd.ops.triton import shared
from hdkd.ops.triton.channel_spatial_attention import channel_spatial_attention_forward
from hdkd.ops.triton.channel_spatial_attention_project import (
    channel_spatial_attention_project_forward)
from hdkd.ops.triton.dwconv_bn_gelu import dwconv_bn_gelu_forward
from hdkd.ops.triton.expand_bn_gelu import expand_bn_gelu_forward
from hdkd.ops.triton.mbcsa import mbcsa_eval_op

pytestmark = [requires_triton, pytest.mark.usefixtures("no_tf32")]


def test_registry_entry():
    b = backends_registry()["triton"]
    assert b.unavailable_reason() is None
    assert b.ops.implemented() == OP_NAMES
    assert "cuda" in b.devices()
    assert ("cpu" in b.devices()) == INTERPRET
    assert hdkd.backends()["triton"] == "available"


def test_auto_picks_triton_for_cuda_tensors_only():
    for op in OP_NAMES:
        assert resolve(op, torch.device("cuda")).name == "triton"
        assert resolve(op, torch.device("cpu")).name != "triton"


def test_unavailable_reason_without_gpu_or_interpreter(monkeypatch):
    if ON_CUDA:
        pytest.skip("a GPU is present")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET" in hdkd_triton._unavailable_reason()
    with pytest.raises(hdkd.BackendUnavailableError, match="TRITON_INTERPRET"):
        hdkd.ops.channel_spatial_attention(torch.randn(1, 4, 3, 3), torch.randn(1, 4, 1, 1),
                                           torch.randn(4, 1, 1, 1), torch.randn(1, 2, 7, 7),
                                           backend="triton")


def _channel_spatial_attention_args():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 12, 5, 4, generator=g).to(DEVICE).requires_grad_(),
            torch.randn(1, 12, 1, 1, generator=g).to(DEVICE).requires_grad_(),
            torch.randn(12, 1, 1, 1, generator=g).to(DEVICE).requires_grad_(),
            torch.randn(1, 2, 7, 7, generator=g).to(DEVICE).requires_grad_())


def test_opcheck_channel_spatial_attention():
    torch.library.opcheck(channel_spatial_attention_forward,
                          _channel_spatial_attention_args())


@pytest.mark.parametrize("training", [True, False])
def test_opcheck_dwconv(training):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 5, 4, generator=g).to(DEVICE).requires_grad_()
    w = torch.randn(5, 1, 3, 3, generator=g).to(DEVICE).requires_grad_()
    gamma, beta = (torch.rand(5, generator=g).to(DEVICE).requires_grad_() for _ in range(2))
    rm, rv = torch.zeros(5, device=DEVICE), torch.ones(5, device=DEVICE)
    torch.library.opcheck(dwconv_bn_gelu_forward,
                          (x, w, gamma, beta, rm, rv, training, 1e-5, 1))


@pytest.mark.parametrize("training,stride", [(True, 1), (False, 2)])
def test_opcheck_expand(training, stride):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 4, 5, 6, generator=g).to(DEVICE).requires_grad_()
    w = torch.randn(12, 4, 1, 1, generator=g).to(DEVICE).requires_grad_()
    gamma, beta = (torch.rand(12, generator=g).to(DEVICE).requires_grad_() for _ in range(2))
    rm, rv = torch.zeros(12, device=DEVICE), torch.ones(12, device=DEVICE)
    torch.library.opcheck(expand_bn_gelu_forward,
                          (z, w, gamma, beta, rm, rv, training, 1e-5, stride))


def test_opcheck_attention_project():
    d, fc1, fc2, sa = _channel_spatial_attention_args()
    project = torch.randn(5, 12, 1, 1, device=DEVICE).requires_grad_()
    mx = d.detach().amax((2, 3))
    ties = (d.detach() == mx[:, :, None, None]).sum((2, 3)).float()
    avg = d.detach().mean((2, 3)).requires_grad_()
    torch.library.opcheck(channel_spatial_attention_project_forward,
                          (d, avg, mx.requires_grad_(), ties, fc1, fc2, sa, project))


def test_opcheck_mbcsa_eval():
    m = hdkd.nn.MBCSA(4, 6, downsample=True).to(DEVICE).eval()
    with torch.no_grad():
        folded = hdkd.ops.reference.fold_mbcsa_float32(m.weights(), 1e-5)
    torch.library.opcheck(mbcsa_eval_op,
                          (torch.randn(2, 4, 7, 6, device=DEVICE), *folded),
                          test_utils=("test_schema", "test_faketensor"))


def test_compile_fullgraph_train_and_eval():
    torch.manual_seed(0)
    m = hdkd.nn.MBCSA(5, 5, backend="triton").to(DEVICE)
    x = torch.randn(2, 5, 7, 6, device=DEVICE)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")

    m.train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    xe = x.clone().requires_grad_()
    m(xe).square().sum().backward()
    eager_grads = [p.grad.clone() for p in m.parameters()] + [xe.grad]
    eager_stats = m.dw_norm.running_var.clone()
    m.load_state_dict(state)
    m.zero_grad()
    xc = x.clone().requires_grad_()
    compiled(xc).square().sum().backward()
    for a, b in zip([p.grad for p in m.parameters()] + [xc.grad], eager_grads):
        assert rel_err(a, b) < 1e-5 or a.abs().max() < 1e-6
    assert rel_err(m.dw_norm.running_var, eager_stats) < 1e-6

    m.eval()
    with torch.no_grad():
        assert rel_err(compiled(x), m(x)) < 1e-6


@pytest.mark.parametrize("training", [False, True])
def test_tensors_beyond_32_bit_addressing_are_refused_before_launching(monkeypatch, training):
    """The kernels address with 32-bit products; a call whose tensors span more elements than
    that is refused with the batch that fits (shown here with the limit lowered)."""
    m = hdkd.nn.MBCSA(4, 4, backend="triton").to(DEVICE).train(training)
    x = torch.randn(3, 4, 6, 6, device=DEVICE)  # 432 elements; the hidden activation 1728
    monkeypatch.setattr(shared, "MAX_EXTENT", 1000)
    with pytest.raises(ValueError, match=r"32-bit addressing.*at most 1 images"):
        with torch.no_grad():
            m(x)
    monkeypatch.setattr(shared, "MAX_EXTENT", 400)  # the input itself is too large
    with pytest.raises(ValueError, match="argument 0"):
        m(x)
    monkeypatch.setattr(shared, "MAX_EXTENT", 2000)
    with torch.no_grad():
        m(x)


def test_extent_of_strided_views():
    t = torch.empty(4, 6)
    assert shared.extent(t) == 24
    assert shared.extent(t[:, ::2]) == 23
    assert shared.extent(t.t()) == 24
    assert shared.extent(torch.empty(0, 3)) == 0
