"""Loading the compiled extension hdkd._C safely and describing its build.

setup.py writes hdkd/_C_build.json next to the .so; it is read BEFORE the .so is loaded, so an
extension built for another torch is reported (with a warning) instead of being loaded into a
torch it was not compiled against. torch is always imported first: hdkd._C links against it.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import warnings
from typing import Optional

import torch

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BUILD_INFO_FILE = os.path.join(_PACKAGE_DIR, "_C_build.json")


@functools.lru_cache(maxsize=None)
def load() -> tuple[Optional[object], Optional[str]]:
    """(module, None) when hdkd._C is loaded and its ops registered, else (None, reason)."""
    if importlib.util.find_spec("hdkd._C") is None:
        return None, ("extension not built (hdkd._C missing: install with "
                      "`pip install --no-build-isolation .` where a C++ compiler, CMake and "
                      "Ninja are available)")
    built_for = _recorded_torch_version()
    if built_for is not None and built_for != torch.__version__:
        reason = (f"extension built for torch {built_for}, running torch {torch.__version__}: "
                  f"rebuild it (pip install --no-build-isolation .)")
        warnings.warn(f"hdkd: {reason}; the 'ext' backend is disabled, the others work",
                      RuntimeWarning, stacklevel=2)
        return None, reason
    try:
        from hdkd import _C
    except (ImportError, OSError) as e:
        return None, f"extension failed to load: {e}"
    info = _C.build_info()
    if info["torch_version"] != torch.__version__:
        reason = (f"extension built for torch {info['torch_version']}, running torch "
                  f"{torch.__version__}: rebuild it (pip install --no-build-isolation .)")
        warnings.warn(f"hdkd: {reason}", RuntimeWarning, stacklevel=2)
        return None, reason
    if info["cpu_vector_isa"] == "AVX2" and torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        return None, "extension compiled for AVX2, which this CPU lacks"
    return _C, None


def _recorded_torch_version() -> Optional[str]:
    try:
        with open(_BUILD_INFO_FILE) as f:
            return json.load(f).get("torch_version")
    except (OSError, ValueError):
        return None


def build_info() -> Optional[dict]:
    """hdkd._C's build_info() (torch version, CUDA and architectures, compilers), or None."""
    module, _ = load()
    return None if module is None else dict(module.build_info())


def cuda_image_problem(capability: tuple[int, int], archs: list[str]) -> Optional[str]:
    """Why a GPU of compute `capability` cannot run a build for `archs` (CMake entries such as
    "80-real", "90a-real", "90-virtual"), or None when it can: SASS for sm_XY runs on X.Y' with
    Y' >= Y (an arch-specific "a" build only on X.Y itself), PTX for compute_XY is compiled by the
    driver for any X.Y or newer."""
    major, minor = capability
    for entry in archs:
        m = re.fullmatch(r"(\d+)(\d)(a?)-(real|virtual)", entry)
        if not m:
            continue
        a_major, a_minor, specific, kind = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
        if specific:
            if (major, minor) == (a_major, a_minor):
                return None
        elif kind == "real" and major == a_major and minor >= a_minor:
            return None
        elif kind == "virtual" and (major, minor) >= (a_major, a_minor):
            return None
    return (f"the extension has no kernel image for this GPU (compute capability "
            f"{major}.{minor}; built for {' '.join(archs) or 'no architecture'}): rebuild with "
            f"TORCH_CUDA_ARCH_LIST=\"{major}.{minor}\"")


def describe_build() -> str:
    """One line for `hdkd info`."""
    module, reason = load()
    if module is None:
        return f"hdkd._C: not loaded ({reason})"
    i = module.build_info()
    cuda = (f"CUDA on ({' '.join(i['cuda_archs'])}; {i.get('cuda_compiler', '')})" if i["cuda"]
            else "CUDA off")
    return (f"hdkd._C: built for torch {i['torch_version']}, {cuda}, {i['compiler']}, "
            f"CPU kernels {i['cpu_vector_isa']}")
