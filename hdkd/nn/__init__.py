"""Drop-in modules: MBCSA, ChannelSpatialAttention (+ its halves ChannelAttention and
SpatialAttention), ConvBNGELU, DFLT."""
from .channel_spatial_attention import ChannelAttention, ChannelSpatialAttention, SpatialAttention
from .conv import ConvBNGELU
from .dflt import DFLT
from .mbcsa import MBCSA

# The paper's name for ChannelSpatialAttention, kept so that code written against it still runs.
CBAM = ChannelSpatialAttention

__all__ = ["CBAM", "ChannelAttention", "ChannelSpatialAttention", "ConvBNGELU", "DFLT", "MBCSA",
           "SpatialAttention"]
