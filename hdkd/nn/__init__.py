"""Drop-in modules: MBCSA, CBAM (+ ChannelAttention, SpatialAttention), ConvBNGELU, DFLT."""
from .attention import CBAM, ChannelAttention, SpatialAttention
from .conv import ConvBNGELU
from .dflt import DFLT
from .mbcsa import MBCSA

__all__ = ["CBAM", "ChannelAttention", "ConvBNGELU", "DFLT", "MBCSA", "SpatialAttention"]
