"""Packaging: hdkd/ plus the Triton kernels of kernels/ installed as hdkd.kernels, and the compiled
extension hdkd._C (csrc/, built by CMake + Ninja against the torch of the target environment).

Install with `pip install --no-build-isolation .` after torch, pybind11, cmake, ninja, setuptools
and wheel (an isolated build still finds the target environment's torch; see _import_torch).
Environment: HDKD_FORCE_CUDA=1 / HDKD_SKIP_CUDA=1 (compile the CUDA sources or not, default: when
nvcc and a CUDA build of torch are present), TORCH_CUDA_ARCH_LIST (default "8.0;9.0+PTX"), CUDA_HOME
(default: the toolkit of the nvcc on PATH), MAX_JOBS, HDKD_REQUIRE_EXT=1 (fail instead of
installing without the extension), HDKD_CUDA_LINEINFO=1 (source lines in compute-sanitizer
reports). A missing torch, CMake or C++ compiler, or a failed build,
gives a pure-Python install and says why.
"""
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO_FILE = "_C_build.json"  # read by hdkd/ops/ext/build.py before loading the .so


def log(msg):
    print(f"hdkd build: {msg}", file=sys.stderr, flush=True)


def flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class SkipExtension(Exception):
    """The extension cannot be built here; the message says why."""


CMAKE_MIN = (3, 18)
CMAKE_MIN_CUDA = (3, 25, 2)  # the first CMake that passes nvcc -std=c++20 (CMAKE_CUDA_STANDARD 20)


def _tool_candidates(name):
    """`name` on PATH, then beside the running interpreter: `pip install cmake ninja` puts them in
    the environment's bin/, which is on PATH only while the environment is activated."""
    found = []
    for path in (shutil.which(name), shutil.which(name, path=os.path.dirname(sys.executable))):
        if path and os.path.realpath(path) not in [os.path.realpath(p) for p in found]:
            found.append(path)
    return found


def _cmake_version(cmake):
    try:
        out = subprocess.run([cmake, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"cmake version (\d+)\.(\d+)(?:\.(\d+))?", out.stdout)
    return tuple(int(g or 0) for g in m.groups()) if m else None


def _find_cmake(minimum):
    """The first CMake of _tool_candidates at least `minimum` (a version tuple)."""
    seen = []
    for path in _tool_candidates("cmake"):
        version = _cmake_version(path)
        if version is not None and version >= minimum:
            return path
        seen.append(f"{path} ({'.'.join(map(str, version)) if version else 'no version'})")
    want = ".".join(map(str, minimum))
    why = " to compile the CUDA sources (C++20)" if minimum >= CMAKE_MIN_CUDA else ""
    raise SkipExtension(f"CMake >= {want} is needed{why}; found {', '.join(seen) or 'none'} "
                        f"(pip install -U cmake)")


def _import_torch():
    """torch of the target environment. pip's isolated build hides its site-packages, so when
    torch is not importable, the interpreter's own site-packages are searched as a last resort."""
    try:
        import torch
        return torch
    except ImportError:
        pass
    for key in ("platlib", "purelib"):
        path = sysconfig.get_path(key)
        if path and os.path.isdir(path) and path not in sys.path:
            site.addsitedir(path)  # appended after the build environment; runs its .pth files
    try:
        import torch
        log(f"isolated build: using the target environment's torch from {torch.__file__}")
        return torch
    except ImportError as e:
        raise SkipExtension(f"torch is not importable ({e}); install torch first and use "
                            f"`pip install --no-build-isolation .`") from None


def _nvcc_toolkit(nvcc):
    """The toolkit directory of an nvcc, following symlinks and wrapper scripts: nvcc itself
    reports where the real binary lives (_HERE_ in its dry-run trace)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cu")
        open(src, "w").close()
        try:
            out = subprocess.run([nvcc, "--dryrun", "-c", src, "-o", os.path.join(tmp, "p.o")],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return None
    m = re.search(r"_HERE_=(\S+)", out.stdout + out.stderr)
    if m and os.path.isfile(os.path.join(m.group(1), "nvcc")):
        return os.path.dirname(os.path.abspath(m.group(1)))
    real = os.path.realpath(nvcc)
    return os.path.dirname(os.path.dirname(real))


def _cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return home if os.path.isfile(os.path.join(home, "bin", "nvcc")) else None
    nvcc = shutil.which("nvcc")
    return _nvcc_toolkit(nvcc) if nvcc else None


def _cuda_archs():
    """TORCH_CUDA_ARCH_LIST ("8.0;9.0", "8.6+PTX", space or ; separated) as CMake architectures:
    real (SASS) code for each, plus PTX where +PTX is asked."""
    # +PTX: GPUs newer than the last listed architecture JIT-compile the kernels instead of
    # failing with "no kernel image"
    spec = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or "8.0;9.0+PTX"
    archs = []
    for item in re.split(r"[;\s]+", spec):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)\.(\d+)([a-z]?)(\+PTX)?", item)
        if not m:
            raise SkipExtension(f"TORCH_CUDA_ARCH_LIST: cannot read {item!r}; expected entries "
                                f"like 8.0, 9.0a or 8.6+PTX")
        num = m.group(1) + m.group(2) + m.group(3)
        archs.append(f"{num}-real")
        if m.group(4):
            archs.append(f"{num}-virtual")
    return archs


def _want_cuda(torch):
    """(cuda_home, archs) when the CUDA sources are to be compiled, else (None, reason)."""
    if flag("HDKD_SKIP_CUDA"):
        return None, "HDKD_SKIP_CUDA=1"
    home = _cuda_home()
    reason = None
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is a CPU-only build"
    elif home is None:
        reason = "no nvcc on PATH (and no CUDA_HOME)"
    if reason and flag("HDKD_FORCE_CUDA"):
        raise SkipExtension(f"HDKD_FORCE_CUDA=1 but {reason}")
    if reason:
        return None, reason
    return home, _cuda_archs()


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def run(self):
        try:
            self._check_tools()
            super().run()
        except SkipExtension as e:
            if flag("HDKD_REQUIRE_EXT"):
                raise SystemExit(f"hdkd build: the extension hdkd._C is required "
                                 f"(HDKD_REQUIRE_EXT=1) but cannot be built: {e}")
            log(f"installing WITHOUT the compiled extension hdkd._C: {e}")

    def _check_tools(self):
        missing = [tool for tool in ("cmake", "ninja") if not _tool_candidates(tool)]
        if missing:
            raise SkipExtension(f"{' and '.join(missing)} not found on PATH "
                                f"(pip install cmake ninja)")
        cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
        if not cxx or shutil.which(cxx) is None:
            raise SkipExtension("no C++ compiler found (set CXX or install g++)")

    def build_extension(self, ext):
        torch = _import_torch()
        try:
            import pybind11
        except ImportError:
            raise SkipExtension("pybind11 is not importable (pip install pybind11)") from None
        extdir = os.path.abspath(os.path.dirname(self.get_ext_fullpath(ext.name)))
        cuda_home, cuda = _want_cuda(torch)
        cmake = _find_cmake(CMAKE_MIN_CUDA if cuda_home else CMAKE_MIN)
        torch_dir = os.path.dirname(torch.__file__)
        args = [
            f"-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_MAKE_PROGRAM={_tool_candidates('ninja')[0]}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DHDKD_TORCH_DIR={torch_dir}",
            f"-DHDKD_TORCH_VERSION={torch.__version__}",
            f"-DHDKD_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        ]
        if cuda_home:
            args += ["-DHDKD_WITH_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={cuda_home}/bin/nvcc",
                     f"-DHDKD_CUDA_LINEINFO={'ON' if flag('HDKD_CUDA_LINEINFO') else 'OFF'}",
                     f"-DCUDAToolkit_ROOT={cuda_home}",
                     f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(cuda)}"]
            log(f"compiling CPU and CUDA sources (CUDA {cuda_home}, architectures "
                f"{' '.join(cuda)})")
        else:
            args.append("-DHDKD_WITH_CUDA=OFF")
            log(f"CPU-only extension: CUDA sources skipped ({cuda})")
        build_temp = os.path.join(os.path.abspath(self.build_temp), "cmake")
        os.makedirs(build_temp, exist_ok=True)
        jobs = os.environ.get("MAX_JOBS", "").strip() or str(os.cpu_count() or 1)
        try:
            subprocess.run([cmake, "-S", ROOT, "-B", build_temp, "-G", "Ninja", *args],
                           check=True)
            subprocess.run([cmake, "--build", build_temp, "--parallel", jobs], check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise SkipExtension(f"the CMake build failed ({e}); the compiler output is above")
        info = {"torch_version": torch.__version__, "cuda": bool(cuda_home),
                "cuda_archs": cuda if cuda_home else []}
        targets = [extdir]
        if self.inplace or getattr(self, "editable_mode", False):  # the .so lands in the tree
            targets.append(os.path.join(ROOT, "hdkd"))
        for target in targets:
            with open(os.path.join(target, BUILD_INFO_FILE), "w") as f:
                json.dump(info, f)


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import its helpers
    packages = find_packages(include=["hdkd", "hdkd.*"]) + ["hdkd.kernels"]
    setup(packages=packages, package_dir={"hdkd.kernels": "kernels"},
          ext_modules=[CMakeExtension("hdkd._C")], cmdclass={"build_ext": CMakeBuild})
