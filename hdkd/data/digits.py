"""The embedded demo data: scikit-learn's handwritten digits (1,797 8 x 8 grayscale images,
10 classes), upsampled once to the model's input size."""
from __future__ import annotations

import torch
from torch import Tensor

from .transforms import resize, to_uint8


def digits_images(img_size: int) -> tuple[Tensor, list[int], list[str]]:
    """(uint8 N x 1 x img_size x img_size images, labels, class names "0".."9")."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("the 'digits' data set ships with scikit-learn: pip install "
                          "scikit-learn") from exc
    digits = load_digits()
    pixels = torch.from_numpy(digits.images).float().div_(16.0)[:, None]  # values are 0..16
    return (to_uint8(resize(pixels, img_size)), [int(y) for y in digits.target],
            [str(name) for name in digits.target_names])
