"""CIFAR-10: the python pickle batches (read safely), the JPEG zip / image folder, or a torchvision download.

Pickle batches that fail torchvision's MD5 check are read with a numpy-only unpickler, so foreign files can
never run code; this module is the only place in the package that unpickles anything.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _common
from ._common import _one_line, _unique, _warn, default_root
from .container import DataError, ImageData, resize_images
from .folder import load_folder

__all__ = ["CIFAR10_CLASSES", "load_cifar10"]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds only plain containers and numpy arrays (no arbitrary callables)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        module = module.replace("numpy.core.", "numpy._core.") if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {_one_line(e)}") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR-10 batch (a {type(obj).__name__}, expected a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batches_restricted(base: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read ``cifar-10-batches-py`` with a numpy-only unpickler (``data``, ``labels``, ``label_names``)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    data, labels = [], []
    for n in names:
        entry = _read_cifar_pickle(base / n)
        try:
            d = np.asarray(entry["data"], dtype=np.uint8)
            lab = np.asarray(entry["labels"], dtype=np.int64)
        except KeyError as e:
            raise DataError(f"{base / n}: CIFAR-10 batch lacks the key {e}") from e
        if d.ndim != 2 or d.shape[1] != 3072 or lab.shape != (d.shape[0],):
            raise DataError(f"{base / n}: expected data [N, 3072] and N labels, got {d.shape} / {lab.shape}")
        data.append(d)
        labels.append(lab)
    meta = _read_cifar_pickle(base / "batches.meta") if (base / "batches.meta").is_file() else {}
    classes = [str(c) for c in meta.get("label_names", CIFAR10_CLASSES)]
    return np.concatenate(data).reshape(-1, 3, 32, 32), np.concatenate(labels), classes


def load_cifar10(
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    download: bool = False,
    max_per_class: int | None = None,
) -> ImageData:
    """CIFAR-10 as uint8 ``[N, 3, 32, 32]`` (resized when ``image_size`` differs).

    Sources, in order: ``root`` itself a ``.zip`` / image folder with ``train/<class>/…``
    (→ :func:`load_folder`); ``root/cifar-10-batches-py`` (the python pickle batches);
    ``root/cifar10-jpeg.zip``; ``download=True`` (torchvision downloads into ``root``).

    The pickle batches are read with ``torchvision.datasets.CIFAR10``, which checks the published MD5s before
    unpickling. Batches that fail that check (re-packed or synthetic ones) are read with a numpy-only
    unpickler instead, with a warning, so foreign files can never run code. ``max_per_class`` keeps only the
    first images of each class (for quick looks; from a zip, only those are decoded).
    """
    import torchvision.datasets as tvd

    if split not in ("train", "test"):
        raise DataError(f"cifar10: split must be 'train' or 'test', got {split!r}")
    search = [Path(root).expanduser()] if root is not None else [default_root(), _common._shared_data_dir()]
    search = _unique([p for b in search for p in (b, b / "cifar10")])
    images: np.ndarray | None = None
    for b in search:
        if (b.is_file() and b.suffix.lower() == ".zip") or (b.is_dir() and (b / split).is_dir()):
            return _as_cifar(
                load_folder(b, split, image_size, channels=3, max_per_class=max_per_class), image_size
            )
        batches = b / tvd.CIFAR10.base_folder
        if batches.is_dir():
            try:
                ds = tvd.CIFAR10(str(b), train=split == "train", download=False)
                images, labels, classes = _from_torchvision_cifar(ds)
            except RuntimeError:
                _warn(
                    f"cifar10: {batches} does not match the published MD5s; "
                    "reading it with a numpy-only unpickler"
                )
                images, labels, classes = _cifar_batches_restricted(batches, split)
            break
        zips = sorted(b.glob("cifar*10*.zip")) if b.is_dir() else []
        if zips:
            return _as_cifar(
                load_folder(zips[0], split, image_size, channels=3, max_per_class=max_per_class), image_size
            )
    if images is None:
        if not download:
            raise DataError(
                f"cifar10 data not found (looked in {', '.join(map(str, search))} for cifar-10-batches-py/ "
                "or cifar10-jpeg.zip); pass the directory holding one of them (or the zip itself) "
                "as data.root, or load online with download=True so torchvision can fetch it"
            )
        dl_root = search[0] if root is not None else default_root()
        try:
            ds = tvd.CIFAR10(str(dl_root), train=split == "train", download=True)
        except (RuntimeError, OSError, ValueError) as e:
            raise DataError(
                f"cifar10: torchvision could not download it into {dl_root}: {_one_line(e)}"
            ) from e
        images, labels, classes = _from_torchvision_cifar(ds)
    if max_per_class is not None:
        keep = np.concatenate([np.flatnonzero(labels == k)[:max_per_class] for k in range(len(classes))])
        images, labels = images[np.sort(keep)], labels[np.sort(keep)]
    x = torch.from_numpy(np.ascontiguousarray(images))
    if image_size is not None:
        x = resize_images(x, image_size)
    return ImageData(x, torch.from_numpy(labels.astype(np.int64)), classes, "cifar10")


def _from_torchvision_cifar(ds: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    return ds.data.transpose(0, 3, 1, 2), np.asarray(ds.targets), list(ds.classes)


def _as_cifar(data: ImageData, image_size: int | None) -> ImageData:
    if sorted(data.class_names) != sorted(CIFAR10_CLASSES):
        raise DataError(f"cifar10: expected the 10 CIFAR-10 class folders, found {data.class_names}")
    order = torch.tensor([CIFAR10_CLASSES.index(c) for c in data.class_names])
    images = data.images if image_size is not None else resize_images(data.images, 32)
    return ImageData(images, order[data.labels], list(CIFAR10_CLASSES), "cifar10")
