"""Functional ops, the backend registry and the reference (hdkd.ops.reference)."""
from . import reference
from .backends import (AUTO_ORDER, Backend, BackendUnavailableError, backends, backends_registry,
                       get_backend, register_backend, resolve, set_backend, unregister_backend,
                       validate_backend_name)
from .contract import BackendOps
from .functional import channel_spatial_attention, dwconv_bn_gelu, mbcsa
from .reference import BatchNormState, FoldedMBCSA, MBCSAWeights

__all__ = [
    "AUTO_ORDER", "Backend", "BackendOps", "BackendUnavailableError", "BatchNormState",
    "FoldedMBCSA", "MBCSAWeights", "backends", "backends_registry", "channel_spatial_attention",
    "dwconv_bn_gelu", "get_backend", "mbcsa", "reference", "register_backend", "resolve",
    "set_backend", "unregister_backend", "validate_backend_name",
]
# the backends register themselves on import
from . import torch_backend  # noqa: E402,F401
from . import triton  # noqa: E402,F401
from . import ext  # noqa: E402,F401  (hdkd._C)
