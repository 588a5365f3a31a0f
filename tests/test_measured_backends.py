"""auto's measured choice: the table lookup, the committed table, resolve and the functional ops
following it, `hdkd info` showing it, and torch.compile(fullgraph=True) through it."""
import dataclasses
import importlib
import math
import os
import sys

import pytest
import torch

import hdkd
from hdkd.nn import MBCSA
from hdkd.ops import (Backend, BackendOps, backends, measured, register_backend, resolve,
                      unregister_backend)
from hdkd.ops.reference import BatchNormState

from helpers import run_outside_checkout

registry_module = importlib.import_module("hdkd.ops.backends")  # the module, not the function
CPU = torch.device("cpu")
EXT = hdkd.backends().get("ext") == "available"
requires_ext = pytest.mark.skipif(not EXT, reason="the ext backend is unavailable here")


def entry(op, shape, ms, dtype="float32", fmt="contiguous", grad=False):
    return {"op": op, "dtype": dtype, "format": fmt, "grad": grad, "shape": list(shape),
            "ms": ms, "winner": min(ms, key=ms.get)}


def table(*entries, kind="cpu"):
    record = {"device": "test", "threads": 1, "torch": torch.__version__, "hdkd_commit": "test",
              "date": "2000-01-01T00:00:00+00:00", "entries": list(entries)}
    return measured.Table({"schema": measured.SCHEMA, "devices": {kind: record}})


@pytest.fixture
def use_table(monkeypatch):
    def use(t):
        monkeypatch.setattr(measured, "TABLE", t)
    return use


def test_nearest_size_in_log_space():
    t = table(entry("mbcsa_eval", (1, 1, 10, 10), {"torch": 1.0, "ext": 2.0}),     # size 100
              entry("mbcsa_eval", (1, 1, 100, 100), {"torch": 2.0, "ext": 1.0}))   # size 10,000
    rank = lambda size: t.ranking("cpu", "mbcsa_eval", torch.float32, "contiguous", False, size)
    assert rank(1) == rank(100) == rank(999) == ("torch", "ext")  # geometric mean: 1,000
    assert rank(1001) == rank(10_000) == rank(10**9) == ("ext", "torch")


def test_cases_are_separated_by_kind_op_dtype_format_and_grad():
    t = table(entry("channel_spatial_attention", (2, 8, 4, 4), {"torch": 1.0, "ext": 2.0}),
              entry("channel_spatial_attention", (2, 8, 4, 4), {"torch": 2.0, "ext": 1.0},
                    fmt="channels_last"),
              entry("channel_spatial_attention", (2, 8, 4, 4), {"torch": 3.0, "ext": 1.0},
                    dtype="bfloat16"),
              entry("channel_spatial_attention", (2, 8, 4, 4), {"torch": 4.0, "ext": 1.0},
                    grad=True))
    op = "channel_spatial_attention"
    assert t.ranking("cpu", op, torch.float32, "contiguous", False, 256)[0] == "torch"
    assert t.ranking("cpu", op, torch.float32, "channels_last", False, 256)[0] == "ext"
    assert t.ranking("cpu", op, torch.bfloat16, "contiguous", False, 256)[0] == "ext"
    assert t.ranking("cpu", op, torch.float32, "contiguous", True, 256)[0] == "ext"
    assert t.ranking("cpu", op, torch.float16, "contiguous", False, 256) == ()
    assert t.ranking("cpu", "mbcsa_eval", torch.float32, "contiguous", False, 256) == ()
    assert t.ranking("cuda", op, torch.float32, "contiguous", False, 256) == ()


def test_triton_is_never_a_cpu_candidate():
    t = table(entry("mbcsa_eval", (1, 1, 4, 4), {"triton": 0.1, "torch": 1.0, "ext": 2.0}))
    assert t.ranking("cpu", "mbcsa_eval", torch.float32, "contiguous", False, 16) == ("torch", "ext")


def test_format_and_dtype_of_a_call():
    x = torch.randn(2, 3, 4, 5)
    assert measured.memory_format(x) == "contiguous"
    assert measured.memory_format(x.contiguous(memory_format=torch.channels_last)) == "channels_last"
    assert measured.memory_format(x[..., ::2]) == "contiguous"  # strided: copied by the kernels
    assert measured.memory_format(torch.randn(2, 1, 4, 4)) == "contiguous"  # both layouts at once
    assert measured.compute_dtype(x) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert measured.compute_dtype(x) == torch.bfloat16
        assert measured.compute_dtype(x.double()) == torch.float64


@pytest.fixture
def fake_backends():
    """test_fast runs mbcsa_eval on the CPU; test_down has it but cannot run; test_gpu runs on
    CUDA only; test_noop has no ops."""
    has_eval = BackendOps(mbcsa_eval=lambda *args, **kwargs: None)
    made = [Backend("test_fast", devices=lambda: ("cpu",), ops=has_eval),
            Backend("test_down", devices=lambda: ("cpu",), ops=has_eval,
                    unavailable_reason=lambda: "no test hardware"),
            Backend("test_gpu", devices=lambda: ("cuda",), ops=has_eval),
            Backend("test_noop", devices=lambda: ("cpu",))]
    for b in made:
        register_backend(b)
    yield
    for b in made:
        unregister_backend(b.name)


def test_resolve_takes_the_fastest_usable_measured_backend(fake_backends, use_table,
                                                           monkeypatch):
    monkeypatch.setattr(registry_module, "AUTO_ORDER", {"cpu": ("torch",)})
    x = torch.randn(1, 1, 4, 4)
    ms = {"test_down": 0.1, "test_gpu": 0.2, "test_noop": 0.3, "unregistered": 0.4,
          "test_fast": 1.0, "torch": 2.0}
    use_table(table(entry("mbcsa_eval", x.shape, ms)))
    assert resolve("mbcsa_eval", CPU, x=x).name == "test_fast"
    assert resolve("mbcsa_eval", CPU).name == "torch"  # no input given: AUTO_ORDER
    use_table(table(entry("mbcsa_eval", x.shape, {"test_down": 0.1, "torch": 2.0})))
    assert resolve("mbcsa_eval", CPU, x=x).name == "torch"
    monkeypatch.setattr(registry_module, "AUTO_ORDER", {"cpu": ("test_down", "test_fast")})
    use_table(table(entry("mbcsa_eval", x.shape, {"test_down": 0.1})))
    assert resolve("mbcsa_eval", CPU, x=x).name == "test_fast"  # no usable measured one
    use_table(table(entry("mbcsa_eval", x.shape, {"torch": 0.1}), kind="cuda"))
    assert resolve("mbcsa_eval", CPU, x=x).name == "test_fast"  # no data for the CPU


def test_explicit_backend_ignores_the_table(fake_backends, use_table):
    x = torch.randn(1, 1, 4, 4)
    use_table(table(entry("mbcsa_eval", x.shape, {"test_fast": 0.1, "torch": 2.0})))
    assert resolve("mbcsa_eval", CPU, "torch", x=x).name == "torch"
    hdkd.set_backend("torch")
    try:
        assert resolve("mbcsa_eval", CPU, x=x).name == "torch"
    finally:
        hdkd.set_backend(None)


# ---- the committed table ---------------------------------------------------------------------

def test_committed_table_is_installed_and_valid():
    assert os.path.exists(measured.TABLE_FILE), "measured_backends.json is not installed"
    devices = measured.TABLE.devices()
    assert "cpu" in devices
    names = {"torch", "ext", "triton"}
    dtypes = {"float32", "bfloat16", "float16"}
    for kind, r in devices.items():
        assert r["device"] and r["threads"] > 0 and r["torch"] and r["hdkd_commit"], kind
        assert r["date"][:4].isdigit() and r["entries"], kind
        sizes = {}
        for e in r["entries"]:
            assert e["op"] in measured.WORKLOADS and e["dtype"] in dtypes, e
            assert e["format"] in measured.FORMATS and isinstance(e["grad"], bool), e
            assert len(e["shape"]) == 4 and all(n > 0 for n in e["shape"]), e
            assert set(e["ms"]) <= names and "torch" in e["ms"], e
            assert kind != "cpu" or "triton" not in e["ms"], e
            assert all(t > 0 and math.isfinite(t) for t in e["ms"].values()), e
            assert e["ms"][e["winner"]] == min(e["ms"].values()), e
            key = (e["op"], e["dtype"], e["format"], e["grad"])
            size = math.prod(e["shape"])
            assert size not in sizes.setdefault(key, set()), f"two entries of size {size}: {e}"
            sizes[key].add(size)


def _input_of(e):
    """A tensor like the entry's main input; under autocast for blocks measured that way."""
    dtype = torch.float32 if e.get("autocast") else getattr(torch, e["dtype"])
    x = torch.empty(e["shape"], dtype=dtype)
    if e["format"] == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def test_resolve_follows_the_committed_table():
    status = backends()
    for e in measured.TABLE.devices()["cpu"]["entries"]:
        x = _input_of(e)
        ranked = [n for n in measured.ranking_of(e["ms"]) if status.get(n) == "available"]
        autocast = torch.autocast("cpu", dtype=getattr(torch, e["dtype"]),
                                  enabled=bool(e.get("autocast")))
        with autocast:
            got = resolve(measured.WORKLOADS[e["op"]], CPU, x=x, grad=e["grad"],
                          workload=e["op"]).name
        assert got == ranked[0], e


# ---- the functional ops and modules follow the table -----------------------------------------

@pytest.fixture
def ran(monkeypatch):
    """Wraps torch's and ext's implementations: ran[-1] is (backend, op) of the latest call."""
    calls = []
    registry = hdkd.ops.backends_registry()
    for name in ("torch", "ext"):
        ops = registry[name].ops
        wrapped = {}
        for op in ops.implemented():
            def wrapper(*args, _impl=getattr(ops, op), _name=name, _op=op, **kwargs):
                calls.append((_name, _op))
                return _impl(*args, **kwargs)
            wrapped[op] = wrapper
        monkeypatch.setattr(registry[name], "ops", dataclasses.replace(ops, **wrapped))
    return calls


def _attention_args(shape, grad=False):
    c = shape[1]
    h = torch.randn(shape, requires_grad=grad)
    return h, torch.randn(2, c, 1, 1) * 0.3, torch.randn(c, 2, 1, 1) * 0.3, torch.randn(1, 2, 7, 7)


@requires_ext
def test_functional_ops_run_the_measured_winner(use_table, ran):
    small, large = (2, 16, 4, 4), (2, 16, 32, 32)
    use_table(table(
        entry("channel_spatial_attention", small, {"torch": 1.0, "ext": 2.0}),
        entry("channel_spatial_attention", large, {"torch": 2.0, "ext": 1.0}),
        entry("dwconv_bn_gelu_train", small, {"torch": 2.0, "ext": 1.0}, grad=True),
        entry("dwconv_bn_gelu_train", small, {"torch": 1.0, "ext": 2.0}, grad=False),
        entry("dwconv_bn_gelu_eval", small, {"torch": 1.0, "ext": 2.0}, grad=True),
        entry("mbcsa_train", (2, 8, 6, 6), {"torch": 1.0, "ext": 2.0}, grad=True),
        entry("mbcsa_eval", (2, 8, 6, 6), {"torch": 2.0, "ext": 1.0}, fmt="channels_last")))
    with torch.no_grad():
        hdkd.ops.channel_spatial_attention(*_attention_args(small))
        assert ran[-1] == ("torch", "channel_spatial_attention")
        hdkd.ops.channel_spatial_attention(*_attention_args(large))
        assert ran[-1] == ("ext", "channel_spatial_attention")
        # grad or bfloat16 was not measured for the attention: AUTO_ORDER (ext first on the CPU)
        h, *w = _attention_args(small)
        hdkd.ops.channel_spatial_attention(h.bfloat16(), *(t.bfloat16() for t in w))
        assert ran[-1] == ("ext", "channel_spatial_attention")

    x = torch.randn(small)
    w = torch.randn(16, 1, 3, 3, requires_grad=True)  # x needs no grad; a weight does
    bn = BatchNormState(torch.ones(16), torch.zeros(16), torch.zeros(16), torch.ones(16))
    hdkd.ops.dwconv_bn_gelu(x, w, bn, True)
    assert ran[-1] == ("ext", "dwconv_bn_gelu")          # dwconv_bn_gelu_train, grad
    with torch.no_grad():
        hdkd.ops.dwconv_bn_gelu(x, w, bn, True)
    assert ran[-1] == ("torch", "dwconv_bn_gelu")        # dwconv_bn_gelu_train, no grad
    hdkd.ops.dwconv_bn_gelu(x, w, bn, False)
    assert ran[-1] == ("torch", "dwconv_bn_gelu")        # dwconv_bn_gelu_eval, grad

    block = MBCSA(8, 8)
    block(torch.randn(2, 8, 6, 6))                       # parameters need grad: the train case
    assert ran[-1] == ("torch", "mbcsa_train")
    with torch.no_grad():
        block.eval()(torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last))
    assert ran[-1] == ("ext", "mbcsa_eval")


@pytest.fixture
def fresh_dynamo():
    """Compiled MBCSA.forward entries would otherwise count against later tests' recompile limit
    (dynamo keeps them per code object for the whole session)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("winner", ["torch", "ext"])
def test_compiled_block_with_auto_is_fullgraph(use_table, fresh_dynamo, winner):
    if winner == "ext" and not EXT:
        pytest.skip("the ext backend is unavailable here")
    x = torch.randn(2, 8, 6, 5).contiguous(memory_format=torch.channels_last)
    ms = {"torch": 1.0, "ext": 1.0}
    ms[winner] = 0.5
    use_table(table(entry("mbcsa_eval", x.shape, ms, fmt="channels_last"),
                    entry("mbcsa_train", x.shape, ms, fmt="channels_last", grad=True)))
    torch.manual_seed(0)
    block = MBCSA(8, 8)
    with torch.no_grad():
        for bn in block.batch_norms():
            bn.running_var.uniform_(0.5, 1.5)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled.eval()(x), block.eval()(x), rtol=1e-4, atol=1e-5)
    compiled.train()(x.requires_grad_()).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ---- hdkd info --------------------------------------------------------------------------------

def test_summary_lines():
    t = table(entry("mbcsa_eval", (8, 96, 56, 56), {"torch": 3.0, "ext": 1.5}),
              entry("mbcsa_eval", (2, 16, 14, 14), {"torch": 1.0, "ext": 1.5}))
    header, row = measured.summary_lines("cpu", t)
    assert header.split()[:4] == ["op", "dtype", "format", "grad"]
    assert row.split()[:4] == ["mbcsa_eval", "float32", "contiguous", "no"]
    assert row.endswith("2x16x14x14 -> torch | 8x96x56x56 -> ext 2.00x")
    assert measured.summary_lines("cuda", t) == [header]


def test_info_shows_the_measured_choices():
    env = {k: v for k, v in os.environ.items() if k != "HDKD_BACKEND"}
    r = run_outside_checkout([sys.executable, "-m", "hdkd", "info"], env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    devices = measured.TABLE.devices()
    for kind, order in hdkd.ops.AUTO_ORDER.items():
        if kind in devices:
            assert f"  {kind}: measured on {devices[kind]['device']}" in r.stdout
            for line in measured.summary_lines(kind):
                assert f"    {line}\n" in r.stdout
        else:
            assert f"  {kind}: no measured data, auto order {' > '.join(order)}" in r.stdout
