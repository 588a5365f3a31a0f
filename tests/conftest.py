"""Test-session setup that must happen before anything imports triton (importing hdkd does).

Without a CUDA GPU the Triton kernels run on the CPU through the Triton interpreter, which reads
TRITON_INTERPRET when triton is imported; setting it here lets one `pytest tests` run every test,
the Triton ones included. On a GPU the kernels run natively."""
import os
import sys

import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# At least two threads for the whole suite: torch may pick one on a 2-vCPU machine, and the CPU
# kernels' thread-pool paths (state each worker thread must see) then go untested.
torch.set_num_threads(max(2, torch.get_num_threads()))
