"""Stage features for feature distillation, from one forward pass."""
from __future__ import annotations

from torch import Tensor, nn


def forward_with_features(model: nn.Module, x: Tensor):
    """(outputs, [stage1, stage2, stage3 outputs]) from ONE forward of `model`.

    Works through wrappers (DistributedDataParallel, torch.compile) because it calls the model
    itself with return_features=True; the hdkd teacher and students accept that flag.
    """
    out = model(x, return_features=True)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], list)):
        raise TypeError(f"forward_with_features: {type(model).__name__} did not return "
                        f"(outputs, features) for return_features=True; expected an hdkd model")
    return out
