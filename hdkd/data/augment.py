"""The original training augmentations (docs/model.md, section 13) on tensors.

Random rotation up to 180 degrees (nearest-neighbour), horizontal and vertical flips, brightness
and contrast jitter 0.3 (in random order), sharpness adjustment with factor 2 (half the time) and a
3 x 3 Gaussian blur with sigma drawn from [0.1, 2]. They work on a float C x H x W image in [0, 1]
(before normalisation, like the original's PIL transforms) and draw every random number from
torch's global generator, so they repeat under torch.manual_seed (and per DataLoader worker).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def rotate(image: Tensor, degrees: float) -> Tensor:
    """Rotate about the centre with nearest-neighbour sampling (torchvision RandomRotation's
    default, which the original uses); corners that come from outside the image are black (0)."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                         dtype=image.dtype)
    grid = F.affine_grid(theta[None], [1, *image.shape], align_corners=False)
    return F.grid_sample(image[None], grid, mode="nearest", padding_mode="zeros",
                         align_corners=False)[0]


def adjust_brightness(image: Tensor, factor: float) -> Tensor:
    return (image * factor).clamp_(0, 1)


def adjust_contrast(image: Tensor, factor: float) -> Tensor:
    """Blend with the mean grayscale level of the image."""
    if image.shape[0] == 3:
        weights = torch.tensor(_GRAY_WEIGHTS, dtype=image.dtype).view(3, 1, 1)
        mean = (image * weights).sum(0).mean()
    else:
        mean = image.mean()
    return (factor * image + (1 - factor) * mean).clamp_(0, 1)


def _window_sum(image: Tensor, weights, dim: int) -> Tensor:
    """sum_j weights[j] * image shifted by j along dim ("valid" 1-D correlation). Plain slicing
    instead of conv2d, which is far slower on single small images on the CPU."""
    k, n = len(weights), image.shape[dim]
    out = image.narrow(dim, 0, n - k + 1) * weights[0]
    for j in range(1, k):
        out = out + image.narrow(dim, j, n - k + 1) * weights[j]
    return out


def adjust_sharpness(image: Tensor, factor: float) -> Tensor:
    """Blend with a smoothed copy (3 x 3 kernel: ones, centre weight 5, sum 13); border pixels
    stay as they are, as in PIL's ImageEnhance.Sharpness."""
    if min(image.shape[1:]) < 3:
        return image
    box = _window_sum(_window_sum(image, (1.0, 1.0, 1.0), 2), (1.0, 1.0, 1.0), 1)
    smooth = image.clone()
    smooth[:, 1:-1, 1:-1] = (box + 4.0 * image[:, 1:-1, 1:-1]) / 13.0
    return (factor * image + (1 - factor) * smooth).clamp_(0, 1)


def gaussian_blur(image: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Separable Gaussian blur with reflect padding."""
    half = kernel_size // 2
    if min(image.shape[1:]) <= half:
        return image
    x = [float(j - half) for j in range(kernel_size)]
    weights = [math.exp(-(v * v) / (2 * sigma * sigma)) for v in x]
    weights = [w / sum(weights) for w in weights]
    rows = _window_sum(_reflect_pad(image, half, 2), weights, 2)
    return _window_sum(_reflect_pad(rows, half, 1), weights, 1)


def _reflect_pad(image: Tensor, half: int, dim: int) -> Tensor:
    """Reflect padding along one dim, by slicing: F.pad(mode="reflect") can take milliseconds
    on a small CPU tensor when the cores are busy (it goes through the thread pool)."""
    n = image.shape[dim]
    left = image.narrow(dim, 1, half).flip(dim)
    right = image.narrow(dim, n - 1 - half, half).flip(dim)
    return torch.cat([left, image, right], dim=dim)


class TrainAugment:
    """Callable applying the original recipe to one float C x H x W image in [0, 1]."""

    def __init__(self, rotation: float = 180.0, hflip: bool = True, vflip: bool = True,
                 brightness: float = 0.3, contrast: float = 0.3, sharpness: float = 2.0,
                 sharpness_p: float = 0.5, blur_kernel: int = 3, blur_sigma=(0.1, 2.0)):
        if blur_kernel and blur_kernel % 2 == 0:
            raise ValueError(f"TrainAugment: expected an odd blur_kernel, got {blur_kernel}")
        self.rotation, self.hflip, self.vflip = rotation, hflip, vflip
        self.brightness, self.contrast = brightness, contrast
        self.sharpness, self.sharpness_p = sharpness, sharpness_p
        self.blur_kernel, self.blur_sigma = blur_kernel, blur_sigma

    def __repr__(self) -> str:
        return (f"TrainAugment(rotation={self.rotation}, hflip={self.hflip}, vflip={self.vflip}, "
                f"brightness={self.brightness}, contrast={self.contrast}, "
                f"sharpness={self.sharpness}, blur_kernel={self.blur_kernel})")

    def __call__(self, image: Tensor) -> Tensor:
        if self.rotation:
            image = rotate(image, _uniform(-self.rotation, self.rotation))
        if self.hflip and float(torch.rand(())) < 0.5:
            image = image.flip(-1)
        if self.vflip and float(torch.rand(())) < 0.5:
            image = image.flip(-2)
        image = self._color_jitter(image)
        if self.sharpness != 1.0 and float(torch.rand(())) < self.sharpness_p:
            image = adjust_sharpness(image, self.sharpness)
        if self.blur_kernel:
            image = gaussian_blur(image, self.blur_kernel, _uniform(*self.blur_sigma))
        return image

    def _color_jitter(self, image: Tensor) -> Tensor:
        b = _uniform(max(0.0, 1 - self.brightness), 1 + self.brightness) if self.brightness else None
        c = _uniform(max(0.0, 1 - self.contrast), 1 + self.contrast) if self.contrast else None
        for op in torch.randperm(2).tolist():
            if op == 0 and b is not None:
                image = adjust_brightness(image, b)
            elif op == 1 and c is not None:
                image = adjust_contrast(image, c)
        return image
