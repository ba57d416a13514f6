"""The one registry of named datasets: loaders, defaults (:class:`DatasetInfo`), aliases, :func:`load`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cifar import load_cifar10
from .container import DataError, ImageData
from .folder import load_folder
from .mnist import load_fashion_mnist, load_mnist
from .synthetic import load_digits, load_gaussian_blobs

__all__ = ["DATASETS", "DatasetInfo", "dataset_info", "load"]


@dataclass(frozen=True)
class DatasetInfo:
    """Defaults of a named dataset. ``image_size`` / ``channels`` are None where they depend on the files."""

    name: str
    image_size: int | None
    channels: int | None
    num_classes: int | None
    flip: bool  # whether random horizontal flips are a sensible augmentation
    needs_files: bool
    description: str


# The one table of named datasets: loader and defaults side by side.
_REGISTRY: dict[str, tuple[Callable[..., ImageData], DatasetInfo]] = {
    "mnist": (
        load_mnist,
        DatasetInfo("mnist", 32, 1, 10, False, True, "MNIST digits, 28×28 zero-padded to 32×32"),
    ),
    "fashion-mnist": (
        load_fashion_mnist,
        DatasetInfo("fashion-mnist", 32, 1, 10, False, True, "Fashion-MNIST, padded to 32×32"),
    ),
    "cifar10": (load_cifar10, DatasetInfo("cifar10", 32, 3, 10, True, True, "CIFAR-10, 32×32 RGB")),
    "folder": (
        load_folder,
        DatasetInfo("folder", None, None, None, False, True, "a directory or .zip of class folders"),
    ),
    "digits": (
        load_digits,
        DatasetInfo("digits", 16, 1, 10, False, False, "scikit-learn 8×8 digits, upscaled to 16×16"),
    ),
    "gaussian-blobs": (
        load_gaussian_blobs,
        DatasetInfo("gaussian-blobs", 16, 1, 10, False, False, "synthetic blobs, 10 classes"),
    ),
}

#: Loader of each named dataset (canonical names; :func:`load` also accepts the aliases).
DATASETS: dict[str, Callable[..., ImageData]] = {name: spec[0] for name, spec in _REGISTRY.items()}
_INFO: dict[str, DatasetInfo] = {name: spec[1] for name, spec in _REGISTRY.items()}

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "blobs": "gaussian-blobs",
    "gaussian_blobs": "gaussian-blobs",
    "sklearn-digits": "digits",
}


def _canonical(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    return key


def dataset_info(name: str) -> DatasetInfo:
    """Default image size, channels, classes and whether flips apply for a dataset name (aliases accepted)."""
    return _INFO[_canonical(name)]


def load(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    download: bool = False,
    **options: Any,
) -> ImageData:
    """Load a named dataset (see :data:`DATASETS`) as :class:`ImageData`: uint8 images ``[N, C, S, S]``.

    ``options`` go to the loader (e.g. ``channels``/``max_per_class`` for ``folder``, ``seed``/``n`` for
    ``gaussian-blobs``). Never downloads unless ``download=True``; raises :class:`DataError` when data is
    missing or corrupt.
    """
    key = _canonical(name)
    if key == "folder" and root is None:
        raise DataError("folder: no data.root given; it must be a directory or .zip of images")
    data = DATASETS[key](root=root, split=split, image_size=image_size, download=download, **options)
    return data
