"""CPU speed of the extension's fused MBCSA eval forward against eager PyTorch, one process.

    python benchmarks/ext_cpu_mbcsa.py [--batch 8] [--channels 96] [--size 56] [--threads 2]

Both run hdkd.nn.MBCSA in eval mode under torch.no_grad on the same random input (float32,
contiguous and channels_last); the runs are interleaved and the median of --repeats is reported.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import hdkd


def _time(fn, x, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--channels", type=int, default=96)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reason = hdkd.backends()["ext"]
    if reason != "available":
        raise SystemExit(f"the ext backend is unavailable: {reason}")
    c = args.channels
    eager = hdkd.nn.MBCSA(c, c, backend="torch").eval()
    for bn in eager.batch_norms():
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    ext = hdkd.nn.MBCSA(c, c, backend="ext").eval()
    ext.load_state_dict(eager.state_dict())
    print(f"MBCSA {c}->{c} @{args.size}x{args.size}, batch {args.batch}, float32, eval forward, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(args.batch, c, args.size, args.size).to(memory_format=fmt)
        with torch.no_grad():
            err = ((ext(x) - eager(x)).norm() / eager(x).norm()).item()
            for m in (eager, ext):  # warm-up
                m(x)
            te, tx = [], []
            for _ in range(args.repeats):
                te += _time(eager, x, 1)
                tx += _time(ext, x, 1)
        me, mx = statistics.median(te), statistics.median(tx)
        name = "channels_last" if fmt is torch.channels_last else "contiguous"
        print(f"  {name:13s} eager {me * 1e3:8.1f} ms   ext {mx * 1e3:8.1f} ms   "
              f"speed-up {me / mx:5.2f}x   rel. error {err:.1e}")


if __name__ == "__main__":
    main()
