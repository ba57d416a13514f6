"""The in-memory dataset container (:class:`ImageData`), its error type, and pixel conversions.

Every loader in :mod:`ddpm.data` returns an :class:`ImageData`: uint8 images ``[N, C, H, W]`` with int64
labels. The model sees floats in [-1, 1] (:func:`to_float`); samples go back to uint8 with :func:`to_uint8`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["DataError", "ImageData", "pad_images", "resize_images", "to_float", "to_uint8"]


class DataError(ValueError):
    """A dataset is missing, corrupt or unusable; the message is one line a user can act on."""


@dataclass
class ImageData:
    """An in-memory labelled image dataset.

    Attributes:
        images: uint8 ``[N, C, H, W]``.
        labels: int64 ``[N]``, values in ``0 .. len(class_names) - 1``.
        class_names: one name per class index.
        name: dataset name (e.g. ``"mnist"``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(
                f"ImageData.images must be uint8 [N, C, H, W], "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"ImageData.labels must have shape [{self.images.shape[0]}], got {tuple(self.labels.shape)}"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    @property
    def channels(self) -> int:
        """C of ``images [N, C, H, W]``."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """H (== W for every dataset here) of ``images [N, C, H, W]``."""
        return int(self.images.shape[2])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, idx: torch.Tensor | Sequence[int] | slice) -> ImageData:
        """The examples at ``idx`` (indices, bool mask or slice) as a new :class:`ImageData`."""
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx)
            if idx.dtype != torch.bool:
                idx = idx.long()
            idx = idx.to(self.images.device)
        label_idx = idx.to(self.labels.device) if isinstance(idx, torch.Tensor) else idx
        return ImageData(self.images[idx], self.labels[label_idx], list(self.class_names), self.name)

    def to(self, device: torch.device | str) -> ImageData:
        """The same data with ``images`` and ``labels`` on ``device`` (e.g. the GPU, for fast batching)."""
        return ImageData(self.images.to(device), self.labels.to(device), list(self.class_names), self.name)


def to_float(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 pixels (any shape) → float in [-1, 1]: ``x / 127.5 - 1``. Shape preserved."""
    if x.dtype != torch.uint8:
        raise TypeError(f"to_float expects a uint8 tensor, got {x.dtype}")
    return x.to(dtype).div_(127.5).sub_(1.0)  # x.to() made a new tensor: in-place is safe


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float in [-1, 1] (any shape) → uint8: ``round((x + 1) * 127.5)`` clamped to 0..255. Shape preserved."""
    return ((x.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def pad_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre uint8 ``[N, C, H, W]`` images on a ``size × size`` canvas of zeros (background): native 28×28
    MNIST samples become exactly the 32×32 images ``load("mnist")`` gives. A no-op at ``size``."""
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}×{w} images to {size}×{size}")
    top, left = (size - h) // 2, (size - w) // 2
    return torch.nn.functional.pad(images, (left, size - w - left, top, size - h - top))


def resize_images(images: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """Resize uint8 ``[N, C, H, W]`` → uint8 ``[N, C, size, size]`` (antialiased when shrinking).

    Uses ``torchvision.transforms.v2.functional.resize``; a no-op when the size already matches.
    """
    if images.shape[-2:] == (size, size):
        return images
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    interp = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}[mode]
    out = []
    for chunk in images.split(4096):
        out.append(TF.resize(chunk, [size, size], interpolation=interp, antialias=True))
    return torch.cat(out)
