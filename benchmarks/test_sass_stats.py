"""The CUDA kernels' static instruction counts (sass_stats.py), checked where the extension was
built with its CUDA sources (CI builds them): no kernel divides integers in software, the cost
that csrc/cuda/divisor.cuh removes from the index math."""
from __future__ import annotations

from pathlib import Path

import pytest

import sass_stats

MANGLED = ("_ZN4hdkd4cuda15for_each_kernelIZZZNS0_11apply_gatesERKN2at6TensorES5_S5_S5_ENKUlvE_"
           "clEvENKUlvE1_clEvEUllE_EEvlT_")
SASS = """
        Function : kernel_a
        /*0000*/                   I2F.U32.RP R0, UR7 ;       /* 0x0 */
        /*0010*/              @!P0 CALL.REL.NOINC 0x18a0 ;    /* 0x0 */
        /*0020*/                   EXIT ;                     /* 0x0 */
        Function : kernel_b
        /*0000*/                   EXIT ;                     /* 0x0 */
"""


def test_kernels_are_named_by_their_hdkd_function():
    assert sass_stats.function_of(MANGLED) == "apply_gates"
    assert sass_stats.function_of("_ZN4hdkd4cuda3FooE") == "?"


def test_counts_of_a_listing():
    a, b = sass_stats.kernel_stats(SASS)
    assert (a["kernel"], a["instructions"], a["divisions"], a["calls"]) == ("kernel_a", 3, 1, 1)
    assert (b["instructions"], b["divisions"], b["calls"]) == (1, 0, 0)


def _extension():
    try:
        import hdkd._C as ext
    except ImportError as e:
        pytest.skip(f"hdkd._C not built: {e}")
    info = ext.build_info()
    if not info["cuda"]:
        pytest.skip("hdkd._C was built without its CUDA sources")
    if sass_stats.cuobjdump() is None:
        pytest.skip("no cuobjdump (it ships with triton's NVIDIA backend)")
    return Path(ext.__file__), [f"sm_{a.split('-')[0]}" for a in info["cuda_archs"]]


def test_no_kernel_divides_integers_in_software():
    library, archs = _extension()
    for arch in archs:
        stats = sass_stats.library_stats(library, arch)
        assert len(stats) > 50, f"{arch}: only {len(stats)} kernels found in {library}"
        slow = [f'{s["function"]}: {s["kernel"][:120]}' for s in stats if s["divisions"]]
        assert not slow, f"{arch}: software integer division in\n" + "\n".join(slow)
