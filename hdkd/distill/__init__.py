"""Distillation: single-pass feature capture (losses and trainer build on it)."""
from .features import forward_with_features

__all__ = ["forward_with_features"]
