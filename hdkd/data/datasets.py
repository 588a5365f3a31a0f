"""Torch datasets yielding (normalised 3 x S x S float tensor, int label)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .folders import read_image
from .transforms import finish, resize, to_uint8


class ArrayImageDataset(Dataset):
    """Images held in memory as a uint8 N x C x H x W tensor (C = 1 or 3).

    Store them already resized to img_size (see `prepare_array`) and an item costs a cast, the
    augmentation when enabled, and the normalisation."""

    def __init__(self, images: Tensor, labels: Sequence[int], img_size: int, augment=None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"ArrayImageDataset: expected a uint8 N x C x H x W tensor, got "
                             f"{images.dtype} with shape {tuple(images.shape)}")
        if len(labels) != len(images):
            raise ValueError(f"ArrayImageDataset: {len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, [int(y) for y in labels]
        self.img_size, self.augment = img_size, augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index].float().div_(255)
        return finish(image, self.img_size, self.augment), self.labels[index]


class ImageFileDataset(Dataset):
    """Images read from files on access (Pillow), for folders too large to hold in memory."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], img_size: int, augment=None):
        if len(labels) != len(paths):
            raise ValueError(f"ImageFileDataset: {len(paths)} paths but {len(labels)} labels")
        self.paths, self.labels = list(paths), [int(y) for y in labels]
        self.img_size, self.augment = img_size, augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return finish(read_image(self.paths[index]), self.img_size, self.augment), self.labels[index]


# Above this many bytes, in-memory images stay at their own size and are resized per item.
PRERESIZE_BUDGET = 1 << 30


def prepare_array(images: Tensor, img_size: int, chunk: int = 512) -> Tensor:
    """uint8 N x C x H x W images resized once to img_size (in chunks, to bound memory), unless
    the result would exceed PRERESIZE_BUDGET bytes."""
    n, c = images.shape[:2]
    if images.shape[-2:] == (img_size, img_size) or n * c * img_size * img_size > PRERESIZE_BUDGET:
        return images
    return torch.cat([to_uint8(resize(images[i:i + chunk].float().div_(255), img_size))
                      for i in range(0, n, chunk)])
