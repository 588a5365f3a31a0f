"""Resizing, channel handling and ImageNet normalisation of image tensors (torch only)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def resize(images: Tensor, size: int) -> Tensor:
    """Bilinear (antialiased) resize of float images, C x H x W or N x C x H x W, to size x size."""
    if images.shape[-2:] == (size, size):
        return images
    batched = images.dim() == 4
    out = F.interpolate(images if batched else images[None], size=(size, size), mode="bilinear",
                        align_corners=False, antialias=True)
    return out if batched else out[0]


def to_uint8(images: Tensor) -> Tensor:
    """Float images in [0, 1] to uint8 (rounded), the compact in-memory storage."""
    return images.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def to_three_channels(image: Tensor) -> Tensor:
    """Grayscale (1 channel) to 3 identical channels; 3-channel images unchanged."""
    channels = image.shape[-3]
    if channels == 3:
        return image
    if channels == 1:
        return image.expand(*image.shape[:-3], 3, *image.shape[-2:])
    raise ValueError(f"expected images with 1 or 3 channels, got {channels}")


def normalize(image: Tensor) -> Tensor:
    """ImageNet mean/std normalisation of a 3 x H x W float image in [0, 1]."""
    return (image - _MEAN) / _STD


def finish(image: Tensor, img_size: int, augment=None) -> Tensor:
    """The per-item pipeline, in the original's order: resize, augment (train only), then
    3 channels and normalisation. `image` is a float C x H x W tensor in [0, 1]."""
    image = resize(image, img_size)
    if augment is not None:
        image = augment(image)
    return normalize(to_three_channels(image))
