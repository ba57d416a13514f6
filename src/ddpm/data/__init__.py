"""Datasets → uint8 tensors → [-1, 1].

Small image datasets are held in memory as one uint8 tensor ``[N, C, H, W]`` (:class:`ImageData`). That is
fast on a CPU, needs no worker processes, and makes exact resumption of the data order trivial: a
:class:`Batches` iterator is fully described by ``(seed, epoch, position)``.

Datasets (see :data:`DATASETS` and :func:`dataset_info`):

- ``mnist``, ``fashion-mnist``: 28×28 gray. Read with ``torchvision.datasets.MNIST/FashionMNIST`` when the
  torchvision layout (``ROOT/MNIST/raw/…``) is present or ``download=True``; otherwise the raw IDX files
  (``train-images-idx3-ubyte.gz`` …, gzipped or not) are parsed directly from a flat directory. By default
  they are zero-padded by 2 pixels per side to 32×32 (LeNet / DDPM practice: the digit keeps its native
  pixels and scale); ``image_size=28`` keeps the native size; any other size pads to 32 and then resizes.
- ``cifar10``: 32×32 RGB, from the python pickle batches (``ROOT/cifar-10-batches-py``) or from a zip /
  folder of images laid out ``train/<class>/*.jpg`` (delegated to ``folder``).
- ``folder``: any directory or ``.zip`` of images, one class per first-level sub-folder.
- ``digits``: scikit-learn's 1,797 real 8×8 handwritten digits, upscaled (default 16×16); no download.
- ``gaussian-blobs``: synthetic, labelled (10 classes), deterministic from a seed; no files at all.

Nothing is ever downloaded unless ``download=True``; missing data raises :class:`DataError` with one line
saying where the files were looked for and how to provide them.

Modules, one concept each (everything public is re-exported here, so ``from ddpm.data import load`` works):

- ``container``: :class:`ImageData`, :class:`DataError`, pixel conversions (``to_float``, ``to_uint8``,
  ``pad_images``, ``resize_images``);
- ``mnist``: the IDX reader and the MNIST-family files; ``cifar``: CIFAR-10 batches (safe unpickling) and zip;
- ``folder``: image folders / zips and the package's one image decoder (``decode_image``, ``read_image``,
  ``IMAGE_EXTENSIONS``), which FID's ``load_images`` uses too;
- ``synthetic``: scikit-learn digits and Gaussian blobs; ``batches``: ``train_val_split`` and ``Batches``;
- ``registry``: the one table of named datasets (``DATASETS``, ``DatasetInfo``, ``dataset_info``, ``load``);
- ``_common``: where files are looked for (``default_root``) and the shared warning / message helpers.

Private helpers live in those modules (patch them there, e.g. ``ddpm.data._common._shared_data_dir``).
"""

from __future__ import annotations

from ._common import default_root
from .batches import Batches, train_val_split
from .cifar import CIFAR10_CLASSES, load_cifar10
from .container import DataError, ImageData, pad_images, resize_images, to_float, to_uint8
from .folder import IMAGE_EXTENSIONS, MAX_IMAGE_FILE_BYTES, decode_image, load_folder, read_image
from .mnist import load_fashion_mnist, load_mnist, read_idx
from .registry import DATASETS, DatasetInfo, dataset_info, load
from .synthetic import load_digits, load_gaussian_blobs

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_FILE_BYTES",
    "Batches",
    "DataError",
    "DatasetInfo",
    "ImageData",
    "dataset_info",
    "decode_image",
    "default_root",
    "load",
    "load_cifar10",
    "load_digits",
    "load_fashion_mnist",
    "load_folder",
    "load_gaussian_blobs",
    "load_mnist",
    "pad_images",
    "read_idx",
    "read_image",
    "resize_images",
    "to_float",
    "to_uint8",
    "train_val_split",
]
