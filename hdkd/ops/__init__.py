"""Functional ops, the backend registry and the reference (hdkd.ops.reference)."""
from . import reference
from .backends import (AUTO_ORDER, Backend, BackendUnavailableError, backends, backends_registry,
                       get_backend, register_backend, resolve, set_backend, unregister_backend,
                       validate_backend_name)
from .functional import TORCH_OPS, channel_spatial_attention, dwconv_bn_gelu, mbcsa
from .reference import BatchNormState, FoldedMBCSA, MBCSAWeights

register_backend(Backend(name="torch", devices=lambda: ("cpu", "cuda", "mps", "xpu"),
                         ops=dict(TORCH_OPS), describe=lambda: "plain PyTorch (the reference)"))

__all__ = [
    "AUTO_ORDER", "Backend", "BackendUnavailableError", "BatchNormState", "FoldedMBCSA",
    "MBCSAWeights", "backends", "backends_registry", "channel_spatial_attention",
    "dwconv_bn_gelu", "get_backend", "mbcsa", "reference", "register_backend", "resolve",
    "set_backend", "unregister_backend", "validate_backend_name",
]
from . import triton_backend  # noqa: E402,F401  (registers the "triton" backend)
from . import ext_backend  # noqa: E402,F401  (registers the "ext" backend: hdkd._C)
