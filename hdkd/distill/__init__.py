"""Distillation: single-pass feature capture (losses and trainer build on it)."""
from .features import forward_with_features
from .losses import HDKDLoss

__all__ = ["HDKDLoss", "forward_with_features"]
