"""Backend registry, selection precedence and `hdkd info`."""
import importlib
import os
import sys

import pytest
import torch

import hdkd
from hdkd.ops import Backend, BackendOps, register_backend, resolve, unregister_backend

from helpers import run_outside_checkout


@pytest.fixture
def fake_backends():
    calls = []
    ok = Backend("test_fast", devices=lambda: ("cpu",), ops=BackendOps(
        mbcsa_eval=lambda *a: calls.append("fast") or torch.zeros(1)))
    down = Backend("test_down", devices=lambda: ("cpu",),
                   ops=BackendOps(mbcsa_eval=lambda *a: torch.zeros(1)),
                   unavailable_reason=lambda: "no test hardware")
    for b in (ok, down):
        register_backend(b)
    yield calls
    for b in (ok, down):
        unregister_backend(b.name)
    hdkd.set_backend(None)


def test_torch_backend_always_available():
    assert hdkd.backends()["torch"] == "available"
    assert resolve("mbcsa_train", torch.device("cpu")).name in hdkd.backends()


def test_selection_precedence(fake_backends, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("HDKD_BACKEND", "test_fast")
    assert resolve("mbcsa_eval", cpu).name == "test_fast"          # environment
    hdkd.set_backend("torch")
    assert hdkd.get_backend() == "torch"
    assert resolve("mbcsa_eval", cpu).name == "torch"              # set_backend beats env
    assert resolve("mbcsa_eval", cpu, "test_fast").name == "test_fast"  # per call beats both
    hdkd.set_backend(None)
    assert hdkd.get_backend() == "test_fast"


def test_unknown_and_unavailable_backends(fake_backends, monkeypatch):
    with pytest.raises(ValueError, match="unknown hdkd backend 'nope'; expected one of: auto, "):
        hdkd.set_backend("nope")
    with pytest.raises(hdkd.BackendUnavailableError, match="'test_down' is unavailable: no test"):
        hdkd.set_backend("test_down")
    monkeypatch.setenv("HDKD_BACKEND", "nope")
    with pytest.raises(ValueError, match="HDKD_BACKEND='nope'"):
        hdkd.get_backend()


def test_explicit_backend_must_have_the_op_and_device(fake_backends):
    with pytest.raises(hdkd.BackendUnavailableError, match="has no 'dwconv_bn_gelu' op"):
        resolve("dwconv_bn_gelu", torch.device("cpu"), "test_fast")
    with pytest.raises(hdkd.BackendUnavailableError, match="does not run on meta tensors"):
        resolve("mbcsa_eval", torch.device("meta"), "test_fast")


def test_auto_skips_unavailable_and_missing_ops(fake_backends, monkeypatch):
    registry = importlib.import_module("hdkd.ops.backends")  # the module, not the function
    monkeypatch.setattr(registry, "AUTO_ORDER",
                        {"cpu": ("test_down", "test_fast", "torch")})
    cpu = torch.device("cpu")
    assert resolve("mbcsa_eval", cpu).name == "test_fast"
    assert resolve("mbcsa_train", cpu).name == "torch"


def _run(args):
    env = dict(os.environ)
    env.pop("HDKD_BACKEND", None)
    return run_outside_checkout(args, env=env, timeout=300)


@pytest.mark.parametrize("cmd", [["hdkd", "info"], [sys.executable, "-m", "hdkd", "info"]])
def test_info_command(cmd):
    if cmd[0] == "hdkd":
        cmd = [os.path.join(os.path.dirname(sys.executable), "hdkd"), "info"]
    r = _run(cmd)
    assert r.returncode == 0, r.stderr
    assert "torch   available" in r.stdout
    for name, status in hdkd.backends().items():  # the same status as this (installed) process
        assert f"  {name:7s} {status}" in r.stdout
    assert "auto on cpu, unmeasured cases:" in r.stdout


def test_cli_requires_a_command():
    r = _run([sys.executable, "-m", "hdkd"])
    assert r.returncode != 0 and "COMMAND" in r.stderr


@pytest.mark.parametrize("triton_version,numpy_version,broken", [
    ("3.6.0", "2.4.6", True), ("3.6.0", "2.3.5", False), ("3.7.0", "2.4.6", False),
    ("3.8.0", "2.5.2", False), ("3.5.1", "2.10.0", True)])
def test_interpreter_problem_of_old_triton_with_new_numpy(monkeypatch, triton_version,
                                                          numpy_version, broken):
    """Triton < 3.7's interpreter fails on numpy >= 2.4 (seen with 3.6.0 and 2.4.6): the backend
    then names the versions and the fix instead of failing inside a kernel."""
    from hdkd.ops import triton as triton_backend

    versions = {"triton": triton_version, "numpy": numpy_version}
    monkeypatch.setattr(triton_backend, "_TRITON_INSTALLED", True)
    monkeypatch.setattr(triton_backend.importlib.metadata, "version", versions.__getitem__)
    problem = triton_backend._find_interpreter_problem()
    assert (problem is not None) == broken
    if broken:
        assert f"triton {triton_version}" in problem and f"numpy {numpy_version}" in problem
        monkeypatch.setattr(triton_backend, "INTERPRETER_PROBLEM", problem)
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert problem in triton_backend._unavailable_reason()


def test_interpreter_check_without_package_metadata(monkeypatch):
    """A triton without installed metadata (a source tree on PYTHONPATH) must not break import."""
    import importlib.metadata

    from hdkd.ops import triton as triton_backend

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(triton_backend, "_TRITON_INSTALLED", True)
    monkeypatch.setattr(triton_backend.importlib.metadata, "version", missing)
    assert triton_backend._find_interpreter_problem() is None
