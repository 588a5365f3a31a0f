"""Triton kernels for hdkd's fused ops (installed as hdkd.kernels)."""
