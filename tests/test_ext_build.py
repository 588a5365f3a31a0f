"""setup.py's build decisions (no compilation): CUDA architectures, the toolkit behind the nvcc
on PATH, and the CUDA on/off rules."""
from __future__ import annotations

import importlib.util
import os
import shutil
from types import SimpleNamespace

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("hdkd_setup", os.path.join(_ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: setup() is not called
    return module


def test_cuda_arch_list(setup_py, monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert setup_py._cuda_archs() == ["80-real", "90-real", "90-virtual"]
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.6 9.0a+PTX")
    assert setup_py._cuda_archs() == ["86-real", "90a-real", "90a-virtual"]
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "sm_80")
    with pytest.raises(setup_py.SkipExtension, match="TORCH_CUDA_ARCH_LIST"):
        setup_py._cuda_archs()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_cuda_home_follows_the_nvcc_on_path(setup_py, monkeypatch):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    home = setup_py._cuda_home()
    assert home and os.path.isfile(os.path.join(home, "bin", "nvcc"))
    assert os.path.isdir(os.path.join(home, "include"))  # the real toolkit, not a wrapper's dir


def test_cuda_decision(setup_py, monkeypatch):
    cpu_torch = SimpleNamespace(version=SimpleNamespace(cuda=None), __version__="2.x+cpu")
    monkeypatch.delenv("HDKD_SKIP_CUDA", raising=False)
    monkeypatch.delenv("HDKD_FORCE_CUDA", raising=False)
    home, why = setup_py._want_cuda(cpu_torch)
    assert home is None and "CPU-only build" in why
    monkeypatch.setenv("HDKD_FORCE_CUDA", "1")
    with pytest.raises(setup_py.SkipExtension, match="HDKD_FORCE_CUDA=1 but"):
        setup_py._want_cuda(cpu_torch)
    monkeypatch.setenv("HDKD_SKIP_CUDA", "1")
    assert setup_py._want_cuda(cpu_torch) == (None, "HDKD_SKIP_CUDA=1")


def _fake_cmake(folder, version):
    folder.mkdir()
    tool = folder / "cmake"
    tool.write_text(f"#!/bin/sh\necho 'cmake version {version}'\n")
    tool.chmod(0o755)
    return str(tool)


def test_cmake_is_found_beside_the_interpreter_when_path_has_an_old_one(setup_py, monkeypatch,
                                                                          tmp_path):
    """An environment used without activating it: PATH gives the system's CMake, too old for
    the CUDA sources; the environment's own (pip install cmake) is beside its python."""
    old = _fake_cmake(tmp_path / "system", "3.25.1")
    new = _fake_cmake(tmp_path / "venv", "4.1.0")
    monkeypatch.setenv("PATH", str(tmp_path / "system"))
    monkeypatch.setattr(setup_py.sys, "executable", str(tmp_path / "venv" / "python3"))
    assert setup_py._tool_candidates("cmake") == [old, new]
    assert setup_py._find_cmake(setup_py.CMAKE_MIN) == old
    assert setup_py._find_cmake(setup_py.CMAKE_MIN_CUDA) == new
    monkeypatch.setattr(setup_py.sys, "executable", str(tmp_path / "elsewhere" / "python3"))
    with pytest.raises(setup_py.SkipExtension,
                       match=r"CMake >= 3\.25\.2 is needed to compile the CUDA sources.*"
                             r"system/cmake \(3\.25\.1\)"):
        setup_py._find_cmake(setup_py.CMAKE_MIN_CUDA)
