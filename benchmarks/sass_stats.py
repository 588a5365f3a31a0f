"""Static instruction counts of the CUDA extension's kernels, from their SASS: a measurement that
needs no GPU (cuobjdump ships with triton's NVIDIA backend).

Per hdkd function (its kernels, all dtypes): instructions, integer divisions done in software
(each 32-bit division by a runtime value is an I2F.U32.RP + MUFU.RCP sequence of about 20
instructions; a 64-bit one adds a CALL to a longer subroutine) and calls (those subroutines, and
the slow paths of float division). Counts are of the whole kernel (every branch), not of the path
one element takes: read them as before / after comparisons of the same kernels.

    python benchmarks/sass_stats.py [hdkd/_C*.so] [--arch sm_90] [--kernels]
"""
from __future__ import annotations

import argparse
import re
import subprocess
from collections import defaultdict
from pathlib import Path

GENERIC = {"hdkd", "cuda", "for_each_kernel", "for_each_warp_kernel", "sum_terms",
           "channel_stats_of", "at", "c10", "Tensor", "Half", "BFloat16"}


def cuobjdump() -> Path | None:
    """triton's copy of cuobjdump, or None."""
    try:
        import triton
    except ImportError:
        return None
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return path if path.exists() else None


def function_of(mangled: str) -> str:
    """The hdkd function whose lambda a kernel runs: the first non-generic lower-case name among
    the mangled name's length-prefixed identifiers."""
    i = 0
    while i < len(mangled):
        digits = re.match(r"\d+", mangled[i:])
        if not digits:
            i += 1
            continue
        start = i + len(digits.group())
        name = mangled[start:start + int(digits.group())]
        if re.fullmatch(r"[a-z_][a-z0-9_]*", name) and name not in GENERIC \
                and not name.startswith("_GLOBAL"):
            return name
        i = start + len(name) if re.fullmatch(r"\w+", name) else start
    return "?"


def kernel_stats(sass: str) -> list[dict]:
    """One dict per kernel of cuobjdump -sass output."""
    out = []
    for block in re.split(r"\n\s*Function : ", sass)[1:]:
        name = block.split("\n", 1)[0].strip()
        instrs = re.findall(r"/\*[0-9a-f]{4,}\*/\s+([^;]+);", block)
        out.append({
            "kernel": name,
            "function": function_of(name),
            "instructions": len(instrs),
            "divisions": sum("I2F.U32.RP" in i for i in instrs),
            "calls": sum(re.sub(r"^@!?U?P\w+\s+", "", i).startswith("CALL") for i in instrs),
        })
    return out


def library_stats(library: Path, arch: str) -> list[dict]:
    tool = cuobjdump()
    if tool is None:
        raise FileNotFoundError("sass_stats: cuobjdump not found (it ships with triton)")
    sass = subprocess.run([tool, "-sass", "-arch", arch, str(library)], check=True,
                          capture_output=True, text=True).stdout
    return kernel_stats(sass)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = next(iter(sorted(Path("hdkd").glob("_C*.so"))), None)
    parser.add_argument("library", nargs="?", default=default, type=Path)
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--kernels", action="store_true", help="also one line per kernel")
    args = parser.parse_args()
    if args.library is None or not args.library.exists():
        raise SystemExit("sass_stats: no extension library (build hdkd._C with CUDA sources first)")
    stats = library_stats(args.library, args.arch)
    if not stats:
        raise SystemExit(f"sass_stats: no {args.arch} kernels in {args.library}")
    columns = ("instructions", "divisions", "calls")
    totals = defaultdict(lambda: defaultdict(int))
    for s in stats:
        for key in ("all", s["function"]):
            totals[key]["kernels"] += 1
            for c in columns:
                totals[key][c] += s[c]
        if args.kernels:
            print(f'{s["instructions"]:6d} {s["divisions"]:4d} {s["calls"]:4d}  '
                  f'{s["function"]:24s} {s["kernel"][:150]}')
    print(f'{"function":24s} {"kernels":>7s} {"instructions":>12s} {"divisions":>9s} {"calls":>5s}')
    for name in sorted(totals, key=lambda n: (n == "all", n)):
        t = totals[name]
        print(f'{name:24s} {t["kernels"]:7d} {t["instructions"]:12d} {t["divisions"]:9d} '
              f'{t["calls"]:5d}')


if __name__ == "__main__":
    main()
