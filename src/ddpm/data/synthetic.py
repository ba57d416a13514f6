"""Datasets that need no files: scikit-learn's 8×8 handwritten digits and seeded synthetic Gaussian blobs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .batches import _mix_seed, train_val_split
from .container import DataError, ImageData, resize_images

__all__ = ["load_digits", "load_gaussian_blobs"]


def load_digits(
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    download: bool = False,
    seed: int = 0,
    test_fraction: float = 0.1,
) -> ImageData:
    """scikit-learn's 1,797 real 8×8 digits as uint8 ``[N, 1, S, S]`` (S = 16 by default), labels 0–9.

    Gray levels 0..16 map to round(v · 255 / 16); upscaling is bicubic (torchvision). The split is a seeded
    90/10 permutation split (``seed``, ``test_fraction``): 1,617 train / 180 test images.
    """
    del root, download
    from sklearn.datasets import load_digits as sk_digits

    if split not in ("train", "test"):
        raise DataError(f"digits: split must be 'train' or 'test', got {split!r}")
    d = sk_digits()
    x = torch.from_numpy(np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    x = resize_images(x, image_size or 16)
    data = ImageData(x, torch.from_numpy(d.target.astype(np.int64)), [str(i) for i in range(10)], "digits")
    train, test = train_val_split(data, test_fraction, seed)
    return train if split == "train" else test


def load_gaussian_blobs(
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    download: bool = False,
    seed: int = 0,
    n: int | None = None,
    channels: int = 1,
) -> ImageData:
    """Synthetic labelled images, uint8 ``[n, channels, S, S]`` (S = 16 by default), made from ``seed``.

    Class k (0–9) is a Gaussian blob centred near angle 2πk/10 on a ring of radius 0.3·S, with random
    position jitter, width and brightness; with ``channels=3`` each class also has its own hue. Deterministic
    in (seed, split); ``n`` defaults to 5,000 train / 1,000 test.
    """
    del root, download
    if split not in ("train", "test"):
        raise DataError(f"gaussian-blobs: split must be 'train' or 'test', got {split!r}")
    if channels not in (1, 3):
        raise DataError(f"gaussian-blobs: channels must be 1 or 3, got {channels}")
    size = image_size or 16
    n = n if n is not None else (5000 if split == "train" else 1000)
    g = torch.Generator().manual_seed(_mix_seed(seed, 0 if split == "train" else 1))
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=g)]
    angle = labels.double() * (2 * math.pi / 10)
    cx = 0.5 + 0.3 * torch.cos(angle) + 0.04 * torch.randn(n, generator=g, dtype=torch.float64)
    cy = 0.5 + 0.3 * torch.sin(angle) + 0.04 * torch.randn(n, generator=g, dtype=torch.float64)
    sigma = 0.09 + 0.05 * torch.rand(n, generator=g, dtype=torch.float64)
    amp = 0.7 + 0.3 * torch.rand(n, generator=g, dtype=torch.float64)
    coords = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    dy = coords.view(1, -1, 1) - cy.view(-1, 1, 1)
    dx = coords.view(1, 1, -1) - cx.view(-1, 1, 1)
    blob = amp.view(-1, 1, 1) * torch.exp(-(dx**2 + dy**2) / (2 * sigma.view(-1, 1, 1) ** 2))  # [n, S, S]
    if channels == 3:
        hue = labels.double() / 10 * 2 * math.pi
        rgb = torch.stack([0.5 + 0.5 * torch.cos(hue + o) for o in (0.0, 2.094, 4.189)], 1)  # [n, 3]
        img = blob.unsqueeze(1) * (0.3 + 0.7 * rgb).view(n, 3, 1, 1)
    else:
        img = blob.unsqueeze(1)
    x = (img * 255).round().clamp(0, 255).to(torch.uint8)
    return ImageData(x, labels.long(), [str(i) for i in range(10)], "gaussian-blobs")
