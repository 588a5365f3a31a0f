"""hdkd: fast HDKD (hybrid data-efficient knowledge distillation) for medical image classification.

    import hdkd
    layer = hdkd.nn.MBCSA(96, 96)                 # drop-in block
    model = hdkd.models.create_model("hdkd", num_classes=4)
    hdkd.backends()                               # {"torch": "available", ...}
"""
from . import nn, ops
from .ops import BackendUnavailableError, backends, get_backend, set_backend
from . import models, distill  # noqa: E402  (models registers with timm when present)

__version__ = "0.1.0"

__all__ = ["BackendUnavailableError", "backends", "distill", "get_backend", "models", "nn", "ops",
           "set_backend", "__version__"]
