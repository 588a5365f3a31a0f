"""The extension's CPU ops and the three models under torch.inference_mode() with more than one
thread, the way users run inference. The kernels call ATen ops on the thread pool's threads;
those must see the caller's InferenceMode, or an in-place update of an inference tensor fails on
every thread but the caller's (one thread hid this)."""
from __future__ import annotations

import pytest
import torch

import hdkd
from ext_env import EXT, EXT_REASON
from op_cases import ext_cases

pytestmark = pytest.mark.skipif(EXT is None, reason=f"hdkd._C unavailable: {EXT_REASON}")


@pytest.fixture
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def _outputs(result):
    return [t for t in (result if isinstance(result, (tuple, list)) else [result])
            if isinstance(t, torch.Tensor)]


def _inference_copies(args):
    """The arguments as inference tensors, as a model's tensors are under inference_mode."""
    with torch.inference_mode():
        return [a.clone() if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_every_op_under_inference_mode_with_two_threads(two_threads, layout):
    # spatial=8: images large enough to be split into several tasks (mbcsa_eval: 1344 rows)
    cases = ext_cases(layout, spatial=8)
    assert {name.split("[")[0] for name, _, _ in cases} == {
        n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("hdkd::")}
    for name, op, args in cases:
        with torch.no_grad():
            expected = _outputs(op(*args))
        inference_args = _inference_copies(args)
        with torch.inference_mode():
            got = _outputs(op(*inference_args))
        assert len(got) == len(expected), name
        for g, e in zip(got, expected):
            assert g.is_inference(), name
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("name", ["hdkd", "hdkd_student", "hdkd_teacher"])
def test_models_under_inference_mode_with_two_threads(two_threads, name):
    torch.manual_seed(0)
    model = hdkd.models.create_model(name, num_classes=4, img_size=64).eval()
    reference = hdkd.models.create_model(name, num_classes=4, img_size=64, backend="torch").eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 64, 64)  # 4 x 16 x 16 rows in the first blocks: 2 parallel tasks
    with torch.no_grad():
        expected = reference(x)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        model = model.to(memory_format=memory_format)
        with torch.inference_mode():
            out = model(x.contiguous(memory_format=memory_format))
        assert out.is_inference()
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
