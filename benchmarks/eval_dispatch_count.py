"""How many torch and custom ops one eval forward of an MBCSA block dispatches, per backend: the
host-side cost a GPU eval forward pays per block (each op is at least one launch or host call).

    TRITON_INTERPRET=1 python benchmarks/eval_dispatch_count.py [--backends triton,ext,torch]

Counts, with the profiler, the ops called from Python for the second call (the first one fills
hdkd's folded-weight cache) under torch.inference_mode(): every custom op, and every aten op that
is not called by another aten op, inside the custom ops' Python bodies included (their torch.empty
and friends; Triton launches are not aten ops and are listed by the kernels' docstrings).
"""
from __future__ import annotations

import argparse
import collections
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported (hdkd imports it)

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import hdkd  # noqa: E402


def count(backend: str) -> collections.Counter:
    torch.manual_seed(0)
    block = hdkd.nn.MBCSA(16, 16, backend=backend).eval()
    x = torch.randn(1, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        block(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            block(x)
    ops = collections.Counter()
    for e in prof.events():
        parent = e.cpu_parent
        if "::" in e.name and not (parent is not None and parent.name.startswith("aten::")):
            ops[e.name] += 1
    return ops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="triton,ext,torch")
    args = p.parse_args()
    for backend in args.backends.split(","):
        status = hdkd.backends().get(backend, "not registered")
        if status != "available":
            print(f"{backend}: {status}")
            continue
        ops = count(backend)
        detail = ", ".join(f"{name} x{n}" for name, n in ops.most_common())
        print(f"{backend}: {sum(ops.values())} ops ({detail})")


if __name__ == "__main__":
    main()
