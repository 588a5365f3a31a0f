"""What is particular to the extension's CUDA kernels (csrc/cuda): on a GPU as torch.ops.hdkd on
CUDA tensors, and on any machine as the same sources compiled for the CPU (tests/cuda_emulation).
Grid-stride loops of several trips, the packed and element paths, exact index division, the BN
backward far from zero, argument and saved-tensor checks, realistic shapes on a GPU. The numerics
on the shared grid (odd sizes, batch 1, more pixels than one reduction chunk, layouts, dtypes,
ties, NaN), opcheck and inductor are in tests/test_conformance.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cuda_emulation
import test_conformance as conformance
from conformance_cases import BACKENDS, Block, Shape
from ext_env import EXT, EXT_REASON
from helpers import REL_TOL, layout, reference_max, rel_err, twins
from hdkd.ops import reference as R

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _cuda_unavailable_reason():
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if EXT is None or not EXT.build_info()["cuda"]:
        return "hdkd._C was built without its CUDA sources"
    return None


@pytest.fixture(scope="module", params=["emulated", "cuda"])
def target(request):
    """(ops namespace, device) of the kernels under test."""
    if request.param == "cuda":
        reason = _cuda_unavailable_reason()
        if reason:
            pytest.skip(reason)
        return torch.ops.hdkd, torch.device("cuda")
    if EXT is None:  # built by the same toolchain as hdkd._C; CI requires both
        pytest.skip(f"no hdkd._C, so no C++ toolchain assumed for the emulation: {EXT_REASON}")
    return cuda_emulation.load(), torch.device("cpu")


def _random(shapes, seed, scales=None):
    g = torch.Generator().manual_seed(seed)
    scales = scales or [1.0] * len(shapes)
    return [torch.randn(s, generator=g, dtype=torch.float64) * a for s, a in zip(shapes, scales)]


def _backward(outs, refs_out, dtype, seed):
    """Backpropagates the same random cotangents through both sets of outputs."""
    g = torch.Generator().manual_seed(seed)
    cot = [torch.randn(r.shape, generator=g, dtype=torch.float64).to(dtype).double()
           for r in refs_out]
    sum(((o.float() * c.to(o.device).float()).sum() for o, c in zip(outs, cot))).backward()
    sum(((r * c).sum() for r, c in zip(refs_out, cot))).backward()


def _dw_reference(x, w, scale, shift):
    k = w.shape[-1]
    z = F.conv2d(x, w, padding=k // 2, groups=x.shape[1])
    y = F.gelu(z * scale[:, None, None] + shift[:, None, None])
    return y, y.mean((2, 3)), y.amax((2, 3))


def _dw_train_reference(x, w, gamma, beta, eps=1e-5):
    """(y, avg, max) with BN on the batch statistics of the conv, then (conv, mean, var)."""
    k = w.shape[-1]
    z = F.conv2d(x, w, padding=k // 2, groups=x.shape[1])
    mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)
    scale = gamma / (var + eps).sqrt()
    return (*_dw_reference(x, w, scale, beta - mean * scale), z, mean, var)


def _large_mean_case(ops, device, shift, tol):
    """The BN training backward where the conv output's mean is `shift` x its std (an input far
    from zero). dgamma is accumulated as sum(dz * (conv - mean)); sum(dz * conv) - mean * sum(dz)
    cancels (at 1e4 x std: 5e-3 relative error before, 1.2e-3 after). What remains comes from the
    forward's uncentred affine (conv * scale + (beta - mean * scale)). The weight's gradient is
    not compared: with a 1 x 1 kernel the BN output does not depend on it, so it is 0 up to
    rounding and has no relative error to speak of."""
    c, eps = 6, 1e-5
    # a 1 x 1 depthwise kernel (no zero padding to widen the spread): conv = w * x, x ~ shift +- 1
    base = _random([(4, c, 32, 32), (c, 1, 1, 1), (c,), (c,)], seed=11, scales=[1, 0.3, 0.5, 0.2])
    base[0] = base[0] + shift
    base[1] = base[1].abs() + 0.5
    base[2] = base[2].abs() + 0.5
    ours, refs = twins(base, torch.float32, device)
    y, avg, mx, _, conv, mean, var = ops.dwconv_bn_gelu_train(*ours, eps)
    assert float((mean.abs() / var.sqrt()).min()) > shift / 2
    yr, avgr, _, z, zm, zv = _dw_train_reference(*refs, eps)
    mxr = reference_max(yr, y, mx)
    _backward([y, avg, mx], [yr, avgr, mxr], torch.float32, seed=4)
    for i, name in ((0, "x"), (2, "gamma"), (3, "beta")):
        err = rel_err(ours[i].grad.cpu(), refs[i].grad)
        assert err < tol, f"d{name}: rel. error {err:.2e}"


@pytest.mark.parametrize("shift,tol", [(1e3, 1e-3), (1e4, 2.5e-3)])
def test_bn_training_backward_with_mean_far_above_std(target, shift, tol):
    _large_mean_case(*target, shift, tol)


@pytest.mark.skipif(EXT is None, reason=f"hdkd._C unavailable: {EXT_REASON}")
@pytest.mark.parametrize("shift,tol", [(1e3, 1e-3), (1e4, 2.5e-3)])
def test_bn_training_backward_with_mean_far_above_std_cpu_kernels(shift, tol):
    _large_mean_case(torch.ops.hdkd, torch.device("cpu"), shift, tol)


@pytest.mark.parametrize("blocks", [1, 3])
def test_grid_stride_loops_of_several_trips(blocks, monkeypatch):
    """A launch has at most 2^20 blocks of 256 threads, so on tensors of more than 2^28 elements
    each thread of a GPU kernel loops over several indices, a grid's width apart. The emulation
    runs the same loops over the same launch shape; capped at a few blocks, its loops take many
    trips on small tensors (the channels_last cases take the 8-channel packed paths)."""
    if EXT is None:
        pytest.skip(f"no hdkd._C, so no C++ toolchain assumed for the emulation: {EXT_REASON}")
    ops = cuda_emulation.load()
    emulation = next(b for b in BACKENDS if b.name == "cuda_emulation")
    monkeypatch.setattr(torch.ops, "hdkd", ops)  # the ext backend's ops, emulated
    testing = cuda_emulation.testing_ops()
    previous = testing.set_max_blocks(blocks)
    try:
        assert testing.set_max_blocks(blocks) == blocks
        for kind in ("strided", "channels_last"):
            conformance.test_channel_spatial_attention(emulation, Shape("trips", (2, 40, 9, 11)),
                                                       torch.float32, kind)
            conformance.test_dwconv_bn_gelu(emulation, Shape("trips", (2, 16, 23, 17), k=5),
                                            torch.float32, kind, True)
            conformance.test_dwconv_bn_gelu(emulation, Shape("trips", (2, 16, 9, 11)),
                                            torch.bfloat16, kind, False)
            conformance.test_mbcsa_eval_without_grad(
                emulation, Block("trips", (2, 10, 11, 6), 20, downsample=True), torch.float32,
                kind)
    finally:
        testing.set_max_blocks(previous)
    with pytest.raises(RuntimeError, match="blocks must be at least 1"):
        testing.set_max_blocks(0)


def _assert_same_path_result(a, b):
    """Two code paths of one kernel: bit for bit in the emulation (one compiler, one rounding);
    on a GPU the compiler may contract a * b + c into an FMA in one path and not in the other,
    so a few units in the last place are allowed there."""
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.device.type != "cuda" or not a.is_floating_point():
        assert torch.equal(a, b)
        return
    ulp = torch.finfo(a.dtype).eps
    torch.testing.assert_close(a, b, rtol=4 * ulp, atol=4 * ulp * float(b.abs().max()) + 1e-30)


def _misaligned(t):
    """t's values in a tensor of the same sizes and strides whose data is not 16-byte aligned."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].as_strided(t.shape, t.stride())
    return out.copy_(t)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 16, 5, 7), (1, 24, 3, 1)])
def test_packed_attention_path_matches_the_element_path(target, shape, dtype):
    """Dense channels_last tensors with C % 8 == 0 go through 16-byte packs of 8 channels; the same
    values in misaligned memory take the one-element-per-thread path, with the same arithmetic:
    the results must agree bit for bit."""
    ops, device = target
    b, c, h, w = shape
    base = _random([shape, (c // 8, c, 1, 1), (c, c // 8, 1, 1), (1, 2, 7, 7), shape], seed=c,
                   scales=[1, 0.3, 0.3, 0.3, 1])
    h_, fc1, fc2, sa_w, g = [t.to(dtype).to(device) for t in base]
    h_, g = (t.contiguous(memory_format=torch.channels_last) for t in (h_, g))
    packed = ops.channel_spatial_attention_forward(h_, fc1, fc2, sa_w)
    elementwise = ops.channel_spatial_attention_forward(_misaligned(h_), fc1, fc2, sa_w)
    for a_, b_ in zip(packed, elementwise):
        _assert_same_path_result(a_, b_)
    _, ca, sa = packed
    packed = ops.channel_spatial_attention_backward(g, h_, fc1, fc2, sa_w, ca, sa)
    elementwise = ops.channel_spatial_attention_backward(_misaligned(g), _misaligned(h_), fc1,
                                                         fc2, sa_w, ca, sa)
    for a_, b_ in zip(packed, elementwise):
        _assert_same_path_result(a_, b_)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k", [((2, 16, 9, 7), 3), ((1, 24, 6, 11), 5), ((1, 8, 2, 3), 1),
                                     ((1, 16, 9, 8), 7)])
def test_packed_depthwise_path_matches_the_element_path(target, shape, k, dtype):
    """The eval depthwise pass takes 8 channels per thread on packable tensors (as the attention
    passes do); the same values in misaligned memory take the element path."""
    ops, device = target
    c = shape[1]
    base = _random([shape, (c, 1, k, k), (c,), (c,)], seed=c + k, scales=[1, 0.4, 0.5, 0.2])
    x, w, scale, shift = [t.to(dtype).to(device) for t in base]
    x = x.contiguous(memory_format=torch.channels_last)
    packed = ops.dwconv_bn_gelu_eval(x, w, scale, shift)
    elementwise = ops.dwconv_bn_gelu_eval(_misaligned(x), w, scale, shift)
    for a_, b_ in zip(packed, elementwise):
        _assert_same_path_result(a_, b_)


def _aligned_16_not_32(t):
    """t's values in memory that starts 16 bytes past a 32-byte boundary: 16-byte packs are
    aligned, a float32 pack (two 16-byte halves) straddles a 32-byte line."""
    itemsize = t.element_size()
    buf = torch.empty(t.numel() + 64 // itemsize, dtype=t.dtype, device=t.device)
    skip = ((16 - buf.data_ptr() % 32) % 32) // itemsize
    out = buf[skip:].as_strided(t.shape, t.stride())
    assert out.data_ptr() % 32 == 16
    return out.copy_(t)


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_paths_on_16_but_not_32_byte_aligned_memory(target, dtype):
    ops, device = target
    base = _random([(2, 16, 5, 6), (16, 1, 3, 3), (16,), (16,)], seed=5,
                   scales=[1, 0.4, 0.5, 0.2])
    x, w, scale, shift = [t.to(dtype).to(device) for t in base]
    x = x.contiguous(memory_format=torch.channels_last)
    assert x.data_ptr() % 32 == 0 or device.type == "cuda"
    for a_, b_ in zip(ops.dwconv_bn_gelu_eval(x, w, scale, shift),
                      ops.dwconv_bn_gelu_eval(_aligned_16_not_32(x), w, scale, shift)):
        _assert_same_path_result(a_, b_)
    h = _random([(2, 16, 5, 6)], seed=6)[0].to(dtype).to(device)
    h = h.contiguous(memory_format=torch.channels_last)
    fc1, fc2, sa_w = [t.to(dtype).to(device) for t in _random(
        [(1, 16, 1, 1), (16, 1, 1, 1), (1, 2, 7, 7)], seed=7, scales=[0.3, 0.3, 0.3])]
    for a_, b_ in zip(ops.channel_spatial_attention_forward(h, fc1, fc2, sa_w),
                      ops.channel_spatial_attention_forward(_aligned_16_not_32(h), fc1, fc2, sa_w)):
        _assert_same_path_result(a_, b_)


def test_index_division_is_exact():
    """The kernels' division by a launch constant (csrc/cuda/divisor.cuh: a multiply-high instead
    of the GPU's slow integer division) against exact integer division, over the whole range of
    non-negative int64 dividends and divisors from 1 to 2^63 - 1. The emulation runs the same
    arithmetic as the GPU (the multiply-high in 128-bit integers instead of __umul64hi)."""
    if EXT is None:
        pytest.skip(f"no hdkd._C, so no C++ toolchain assumed for the emulation: {EXT_REASON}")
    ops = cuda_emulation.testing_ops()
    g = torch.Generator().manual_seed(0)
    top = 2**63 - 1
    big = [2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1, 2**32, 2**32 + 1, 3**20, 2**62 - 1, 2**62,
           2**62 + 1, top - 1, top]
    sizes = [384, 3136, 12544, 50176, 64 * 384 * 3136]  # channels, pixels, elements
    divisors = list(range(1, 300)) + sizes + big
    divisors += torch.randint(1, top, (200,), generator=g).tolist()
    divisors += [1 << torch.randint(1, 62, (), generator=g).item() for _ in range(20)]
    for d in divisors:
        k = torch.randint(0, max(top // d, 1), (64,), generator=g)
        n = torch.cat([torch.tensor([0, 1, top, top - 1, d - 1, d, min(d + 1, top)] + big),
                       torch.randint(0, top, (256,), generator=g),
                       k * d, (k * d - 1).clamp(min=0), k * d + 1])
        q, r = ops.divmod(n, d)
        assert torch.equal(q, n // d) and torch.equal(r, n % d), f"divisor {d}"


def test_errors_name_the_argument(target):
    ops, device = target
    h = torch.randn(1, 8, 4, 4, device=device)
    fc1, fc2 = torch.randn(2, 8, 1, 1, device=device), torch.randn(8, 2, 1, 1, device=device)
    sa = torch.randn(1, 2, 7, 7, device=device)
    with pytest.raises(RuntimeError, match="fc2_weight of shape"):
        ops.channel_spatial_attention_forward(h, fc1, fc2[:4], sa)
    with pytest.raises(RuntimeError, match="weight of shape"):
        ops.dwconv_bn_gelu_eval(h, torch.ones(8, 1, 3, 2, device=device),
                                torch.ones(8, device=device), torch.zeros(8, device=device))
    with pytest.raises(RuntimeError, match="float32, bfloat16 or float16"):
        ops.channel_spatial_attention_forward(h.double(), fc1, fc2, sa)
    with pytest.raises(RuntimeError, match="at least one pixel"):
        ops.channel_spatial_attention_forward(h[:, :, :0], fc1, fc2, sa)
    with pytest.raises(RuntimeError, match="expected cin == cout"):
        hid = torch.randn(32, device=device)
        ops.mbcsa_eval(h, torch.randn(32, 8, 1, 1, device=device), hid,
                       torch.randn(32, 1, 3, 3, device=device), hid,
                       torch.randn(2, 32, 1, 1, device=device),
                       torch.randn(32, 2, 1, 1, device=device), sa,
                       torch.randn(6, 32, 1, 1, device=device), torch.randn(6, device=device),
                       None)


def test_saved_inputs_are_checked(target):
    """The backward ops check the shapes of what autograd saved: a mismatch is an error naming the
    tensor, never an out-of-bounds read."""
    ops, device = target
    x = torch.randn(2, 8, 5, 4, device=device)
    w, ones = torch.randn(8, 1, 3, 3, device=device), torch.ones(8, device=device)
    stat = torch.zeros(2, 8, device=device)
    with pytest.raises(RuntimeError, match="ties of shape"):
        ops.dwconv_bn_gelu_backward(x, None, None, x, w, None, ones, ones, x, stat, stat[:1], None,
                                    None)
    with pytest.raises(RuntimeError, match="y of shape"):
        ops.dwconv_bn_gelu_backward(x, None, None, x, w, None, ones, ones, x[:1], stat, stat, None,
                                    None)
    with pytest.raises(RuntimeError, match="conv of shape"):
        ops.dwconv_bn_gelu_backward(x, None, None, x, w, x[:1], ones, ones, x, stat, stat, ones,
                                    ones)
    with pytest.raises(RuntimeError, match="k odd and <= 7"):
        ops.dwconv_bn_gelu_eval(x, torch.randn(8, 1, 9, 9, device=device), ones, ones)
    h, fc1, fc2 = x, torch.randn(2, 8, 1, 1, device=device), torch.randn(8, 2, 1, 1, device=device)
    sa = torch.randn(1, 2, 7, 7, device=device)
    ca, s = torch.rand(2, 8, device=device), torch.rand(2, 5, 4, device=device)
    with pytest.raises(RuntimeError, match="sa of shape"):
        ops.channel_spatial_attention_backward(h, h, fc1, fc2, sa, ca, s[:, :4])
    hid = torch.randn(32, device=device)
    with pytest.raises(RuntimeError, match="sa_weight of shape"):
        ops.mbcsa_eval(x, torch.randn(32, 8, 1, 1, device=device), hid,
                       torch.randn(32, 1, 3, 3, device=device), hid,
                       torch.randn(2, 32, 1, 1, device=device),
                       torch.randn(32, 2, 1, 1, device=device), sa[..., :5],
                       torch.randn(8, 32, 1, 1, device=device), torch.randn(8, device=device), None)


def test_dwconv_backward_takes_conv_in_any_layout(target):
    """The saved conv given contiguous instead of channels_last gives the same gradients."""
    ops, device = target
    x = torch.randn(2, 6, 5, 7, device=device)
    w, gamma, beta = torch.randn(6, 1, 3, 3, device=device), torch.rand(6, device=device) + 0.5, \
        torch.randn(6, device=device)
    y, _, mx, ties, conv, mean, var = ops.dwconv_bn_gelu_train(x, w, gamma, beta, 1e-5)
    invstd = (var + 1e-5).rsqrt()
    scale, shift = gamma * invstd, beta - mean * gamma * invstd
    g, gmax = torch.randn_like(x), torch.randn_like(mx)
    a = ops.dwconv_bn_gelu_backward(g, None, gmax, x, w, conv, scale, shift, y, mx, ties, mean,
                                    invstd)
    b = ops.dwconv_bn_gelu_backward(g, None, gmax, x, w, conv.contiguous(), scale, shift, y, mx,
                                    ties, mean, invstd)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


@pytest.mark.skipif(_cuda_unavailable_reason() is not None,
                    reason=str(_cuda_unavailable_reason()))
def test_cuda_weights_on_another_device_are_named():
    h = torch.randn(1, 8, 4, 4, device="cuda")
    fc1, fc2, sa = torch.randn(2, 8, 1, 1), torch.randn(8, 2, 1, 1), torch.randn(1, 2, 7, 7)
    with pytest.raises(RuntimeError, match="expected fc1_weight on cuda"):
        torch.ops.hdkd.channel_spatial_attention_forward(h, fc1, fc2, sa)


requires_cuda = pytest.mark.skipif(_cuda_unavailable_reason() is not None,
                                   reason=str(_cuda_unavailable_reason()))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_realistic_shapes_on_cuda(dtype):
    """An MBCSA stage-3 hidden activation (docs/performance.md), channels_last, against the float64
    reference computed on the GPU."""
    base = _random([(8, 384, 28, 28), (24, 384, 1, 1), (384, 24, 1, 1), (1, 2, 7, 7),
                    (384, 1, 3, 3), (384,), (384,)], seed=7,
                   scales=[1, 0.1, 0.1, 0.3, 0.3, 0.2, 0.1])
    base[5] = base[5].abs() + 0.5
    h = layout(base[0].to(dtype), "channels_last").cuda()
    weights = [t.to(dtype).cuda() for t in base[1:4]]
    out = torch.ops.hdkd.channel_spatial_attention_forward(h, *weights)[0]
    ref = R.channel_spatial_attention(h.double(), *[w.double() for w in weights])
    assert rel_err(out, ref) < REL_TOL[dtype]
    dw = [t.to(dtype).cuda() for t in base[4:]]
    y = torch.ops.hdkd.dwconv_bn_gelu_train(h, *dw, 1e-5)[0]
    yr = _dw_train_reference(h.double(), *[t.double() for t in dw])[0]
    assert rel_err(y, yr) < REL_TOL[dtype]


@pytest.mark.parametrize("kernels", ["target", "cpu"])
def test_training_with_fewer_than_two_values_per_channel_is_refused(target, kernels):
    ops, device = target if kernels == "target" else (torch.ops.hdkd, torch.device("cpu"))
    if kernels == "cpu" and EXT is None:
        pytest.skip(EXT_REASON)
    w, g, b = (t.to(device) for t in (torch.randn(4, 1, 3, 3), torch.ones(4), torch.zeros(4)))
    for shape in ((0, 4, 5, 5), (1, 4, 1, 1)):
        with pytest.raises(RuntimeError, match="at least 2 values per channel"):
            ops.dwconv_bn_gelu_train(torch.randn(shape, device=device), w, g, b, 1e-5)
