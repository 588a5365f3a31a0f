"""The CUDA kernels of csrc/cuda built for the CPU (HDKD_CUDA_EMULATION) as torch.ops.hdkd_cuda_emu,
with hdkd's fake kernels and autograd registered for that namespace: CI tests the kernels'
indexing and math against the reference without a GPU (csrc/cuda/launch.cuh says why a loop over
the launch indices is a faithful model of those kernels). What emulation cannot check (launch
configuration, streams, memory errors, speed) is left to tests on a GPU and compute-sanitizer."""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CSRC = HERE.parents[1] / "csrc"
SOURCE = HERE / "hdkd_cuda_emu.cpp"
NAMESPACE = "hdkd_cuda_emu"

_ops = None


def _digest() -> str:
    """The build folder is keyed by torch's version and every source the build includes (torch's
    own check only sees the listed sources, not the .cu files they include)."""
    h = hashlib.sha256(torch.__version__.encode())
    for path in sorted([SOURCE, *CSRC.glob("*.h"), *(CSRC / "cuda").iterdir()]):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def _sources(folder: Path) -> list[str]:
    """hdkd_cuda_emu.cpp and, for every csrc/cuda/*.cu, a C++ file in `folder` that includes it
    (torch's builder would hand a .cu file to nvcc), so that a new kernel file is built with no
    edit here."""
    sources = [str(SOURCE)]
    for cu in sorted((CSRC / "cuda").glob("*.cu")):
        wrapper = folder / f"{cu.stem}.cpp"
        text = f'#include "cuda/{cu.name}"\n'
        if not wrapper.exists() or wrapper.read_text() != text:
            wrapper.write_text(text)
        sources.append(str(wrapper))
    return sources


def testing_ops():
    """torch.ops.cuda_emu_testing: set_max_blocks and divmod of the emulation (built by load)."""
    load()
    return torch.ops.cuda_emu_testing


def load(asan: bool = False):
    """torch.ops.hdkd_cuda_emu, building it on first use (about a minute and a half on 2 cores).
    asan: built with AddressSanitizer (the process must run with libasan preloaded: see
    test_cuda_emulation_asan)."""
    global _ops
    if _ops is None:
        from torch.utils.cpp_extension import load as build

        from hdkd.ops import ext

        flags = ["-O1", "-DHDKD_CUDA_EMULATION"]
        if asan:
            flags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        folder = Path(tempfile.gettempdir()) / f"hdkd_cuda_emu_{_digest()}{'_asan' if asan else ''}"
        folder.mkdir(exist_ok=True)
        build(name=NAMESPACE, sources=_sources(folder), extra_include_paths=[str(CSRC)],
              extra_cflags=flags, extra_ldflags=["-fsanitize=address"] if asan else [],
              build_directory=str(folder), is_python_module=False)
        ext.register(NAMESPACE)
        _ops = getattr(torch.ops, NAMESPACE)
    return _ops
