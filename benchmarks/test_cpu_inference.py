"""CPU inference of the three models as a user runs it, beside what that user would use instead.

impls, one process, the same weights:
  hdkd          the default model (backend auto) under torch.inference_mode()
  eager         the reference (backend "torch") under inference_mode
  compile       torch.compile of the reference
  compile_hdkd  torch.compile of the default model
  onnxruntime   ONNX Runtime (CPU provider, torch's thread count) on the ONNX export of the
                reference (torch.onnx.export, dynamo, dynamic batch)
in two precisions: float32, and bfloat16 as users run it on a CPU (float32 weights and input
under torch.autocast("cpu", torch.bfloat16)); ONNX Runtime's CPU provider has no bfloat16
Conv (a bfloat16 export does not load), so its bfloat16 case skips and its float32 case is the
peer.
extra_info of every case: speedup_vs_eager / _compile / _onnxruntime (conftest; peers of the same
precision), and for hdkd the first call after eval() (folding and caching the weights) as
first_call_s and its ratio to the median. Full run: 224 px, batch 1 and 16. Smoke
(--benchmark-disable): 32 px, batch 1 and 2, the compile peers and bfloat16 only for hdkd at
batch 1.
"""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time

import pytest
import torch

from hdkd import flops

import cases, floors
from harness import ON_GPU, Workload, run

pytestmark = pytest.mark.skipif(ON_GPU, reason="CPU inference suite (the GPU suites are "
                                               "test_models.py and test_blocks.py)")

MODELS = ["hdkd", "hdkd_student", "hdkd_teacher"]
IMPLS = ["hdkd", "eager", "compile", "compile_hdkd", "onnxruntime"]
PRECISIONS = ["float32", "bfloat16"]


def _size() -> int:
    return 32 if cases.SMOKE else 224


def _batches() -> list[int]:
    return [1, 2] if cases.SMOKE else [1, 16]


def _model(name: str, backend: str) -> torch.nn.Module:
    from hdkd.models import create_model

    torch.manual_seed(0)
    m = create_model(name, num_classes=cases.NUM_CLASSES, img_size=_size(), backend=backend)
    return cases.randomize_bn_stats(m).eval()


# removed when the process exits (each export is 15-20 MB)
_EXPORTS = tempfile.TemporaryDirectory(prefix="hdkd-onnx-")


def onnx_export(name: str):
    """(path of the ONNX export of the reference model with a dynamic batch, None), or (None, the
    reason it could not be made)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None, "onnxruntime is not installed (pip install onnxruntime onnxscript)"
    model = _model(name, "torch")
    x = torch.randn(2, 3, _size(), _size())
    path = os.path.join(tempfile.mkdtemp(dir=_EXPORTS.name), f"{name}.onnx")
    try:
        torch.onnx.export(model, (x,), path, dynamo=True, opset_version=18,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    except Exception as e:  # noqa: BLE001 (the exporter raises many kinds; the reason is what counts)
        return None, f"torch.onnx.export failed: {type(e).__name__}: {str(e)[:200]}"
    return path, None


def onnx_session_options():
    """ONNX Runtime's options for the peer: torch's thread count, one inter-op thread."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return options


@functools.lru_cache(maxsize=None)
def _onnx_session(name: str):
    """(InferenceSession, input name) for the export of the reference model, or a skip reason."""
    path, reason = onnx_export(name)
    if path is None:
        return None, reason
    import onnxruntime as ort
    session = ort.InferenceSession(path, onnx_session_options(),
                                   providers=["CPUExecutionProvider"])
    return session, session.get_inputs()[0].name


def _precision(precision: str):
    """The context a user runs inference in, for this precision."""
    if precision == "bfloat16":
        return torch.autocast("cpu", torch.bfloat16)
    return contextlib.nullcontext()


def _runner(name: str, impl: str, batch: int, precision: str):
    """(callable on one input, the model whose FLOPs are counted) for impl."""
    if impl == "onnxruntime":
        if precision != "float32":
            pytest.skip("ONNX Runtime's CPU provider has no bfloat16 Conv (onnxruntime 1.32 "
                        "refuses to load the model); its float32 case is the peer")
        session, input_name = _onnx_session(name)
        if session is None:
            pytest.skip(input_name)
        return (lambda x: session.run(None, {input_name: x.numpy()})[0]), _model(name, "torch")
    model = _model(name, "torch" if impl in ("eager", "compile") else "auto")
    fwd = model
    if impl.startswith("compile"):
        # The models share their blocks' forward code: without a reset, the compiles of the
        # earlier cases (other models, batches, precisions) fill dynamo's per-code cache and a
        # later case silently runs eagerly (seen: bfloat16 "compile" at eager's time).
        torch._dynamo.reset()
        fwd = torch.compile(model)

    def infer(x):
        with torch.inference_mode(), _precision(precision):
            return fwd(x)
    return infer, model


def _params():
    out = []
    for precision in PRECISIONS:
        suffix = "" if precision == "float32" else "-bf16"
        for name in MODELS:
            for batch in _batches():
                for impl in IMPLS:
                    first_case = (name, batch) == ("hdkd", 1)
                    if cases.SMOKE and not first_case and (impl.startswith("compile")
                                                           or precision != "float32"):
                        continue
                    out.append(pytest.param(name, batch, impl, precision,
                                            id=f"{name}-b{batch}-{impl}{suffix}"))
    return out


def _first_call(name: str, x: torch.Tensor, precision: str) -> float:
    """Seconds of the first call of a freshly created default model after eval()."""
    model = _model(name, "auto")
    start = time.perf_counter()
    with torch.inference_mode(), _precision(precision):
        model(x)
    return time.perf_counter() - start


@pytest.mark.parametrize("name,batch,impl,precision", _params())
def test_cpu_inference(benchmark, session, name, batch, impl, precision):
    fn, model = _runner(name, impl, batch, precision)
    size = _size()
    inputs = [torch.randn(batch, 3, size, size) for _ in range(2)]
    one = torch.randn(1, 3, size, size)
    fl = batch * flops.count_flops(model, (one,))
    nbytes, rule = floors.inference_bytes(batch * 3 * size * size, 4, floors.param_bytes(model),
                                          batch * cases.NUM_CLASSES)
    # the floors are float32's: weights and input stay float32 under autocast
    wl = Workload("cpu_inference", f"{name} @{size}", precision, batch, fl, "fvcore forward",
                  nbytes, rule, images=True, extra={"torch_threads": torch.get_num_threads()})
    first = _first_call(name, inputs[0], precision) if impl == "hdkd" else None
    run(benchmark, session, wl, impl, fn, [(x,) for x in inputs])
    if first is not None:
        benchmark.extra_info["first_call_s"] = first
        median = benchmark.extra_info.get("median_s")
        if median:
            benchmark.extra_info["first_call_vs_steady"] = first / median
