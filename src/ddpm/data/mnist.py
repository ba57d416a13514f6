"""MNIST and Fashion-MNIST: the IDX file reader and where the MNIST-family files are found.

Read with ``torchvision.datasets.MNIST/FashionMNIST`` when the torchvision layout (``ROOT/MNIST/raw/…``) is
present or ``download=True``; otherwise the raw IDX files (``train-images-idx3-ubyte.gz`` …, gzipped or not)
are parsed directly from a flat directory. By default the 28×28 digits are zero-padded by 2 pixels per side
to 32×32 (LeNet / DDPM practice); ``image_size=28`` keeps the native size; any other size pads to 32 and then
resizes.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import _common
from ._common import _one_line, _unique, _warn, default_root
from .container import DataError, ImageData, resize_images

__all__ = ["load_fashion_mnist", "load_mnist", "read_idx"]

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a numpy array, validating the header.

    The format: 2 zero bytes, a type byte (0x08 = uint8 …), the number of dimensions, then one big-endian
    uint32 per dimension, then the raw values. Raises :class:`DataError` on anything else.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read IDX file {path}: {_one_line(e)}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or not 1 <= raw[3] <= 4:
        magic = raw[:4].hex() or "empty"
        raise DataError(f"{path} is not an IDX file (bad magic {magic}); the file is corrupt")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated; the file is corrupt")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path}: IDX header says {dims} ({expected} bytes) but the file holds {len(raw)} bytes; "
            "it is corrupt"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


@dataclass(frozen=True)
class _IdxSpec:
    name: str
    tv_class: str  # torchvision dataset class (and its folder name under root)
    default_dirs: tuple[Path, ...]


def _idx_spec(name: str) -> _IdxSpec:
    if name == "mnist":
        return _IdxSpec("mnist", "MNIST", (_common._shared_data_dir() / "mnist",))
    return _IdxSpec("fashion-mnist", "FashionMNIST", (Path("/usr/share/datasets/fashion-mnist"),))


def _idx_files(directory: Path, prefix: str) -> tuple[Path, Path] | None:
    """``(images, labels)`` for ``prefix`` ("train" / "t10k") in ``directory``, gzipped or not, or None."""
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        for suffix in (".gz", ""):
            for sep in ("-", "."):  # "train-images-idx3-ubyte" and the occasional "train-images.idx3-ubyte"
                p = directory / f"{prefix}-{kind.replace('-', sep, 1)}{suffix}"
                if p.is_file():
                    found.append(p)
                    break
            else:
                continue
            break
    return (found[0], found[1]) if len(found) == 2 else None


def _mnist_like(
    spec: _IdxSpec, root: str | Path | None, split: str, image_size: int | None, download: bool
) -> ImageData:
    import torchvision.datasets as tvd

    if split not in ("train", "test"):
        raise DataError(f"{spec.name}: split must be 'train' or 'test', got {split!r}")
    tv_cls = getattr(tvd, spec.tv_class)
    base = Path(root).expanduser() if root is not None else None
    search = [base] if base is not None else [default_root(), *spec.default_dirs]
    dirs = _unique([d for b in search for d in (b, b / spec.tv_class / "raw", b / spec.name, b / "raw")])

    def find(prefix: str) -> tuple[Path | None, tuple[Path, Path] | None]:
        for b in search:  # torchvision's layout: all four files, uncompressed, in ROOT/<Class>/raw
            raw = b / spec.tv_class / "raw"
            if all(
                (raw / f"{p}-{k}").is_file()
                for p in ("train", "t10k")
                for k in ("images-idx3-ubyte", "labels-idx1-ubyte")
            ):
                return b, None
        for d in dirs:  # flat IDX files (gzipped or not), parsed here
            files = _idx_files(d, prefix)
            if files is not None:
                return None, files
        return None, None

    prefix = "train" if split == "train" else "t10k"
    tv_root, files = find(prefix)
    if tv_root is None and files is None and download:
        tv_root = base if base is not None else default_root()
    if tv_root is None and files is None and split == "train":
        tv_root, files = find("t10k")
        if tv_root is not None or files is not None:
            where = (
                files[0].parent if files is not None else tv_root / spec.tv_class / "raw" if tv_root else None
            )
            _warn(f"{spec.name}: no train split in {where}; training on the test split (t10k) instead")
            split = "test"
    if tv_root is not None:
        try:
            ds = tv_cls(str(tv_root), train=split == "train", download=download)
        except (RuntimeError, AssertionError, OSError, ValueError) as e:
            raise DataError(
                f"{spec.name}: torchvision could not load/download it into {tv_root}: {_one_line(e)}"
            ) from e
        images, labels = ds.data.numpy(), ds.targets.numpy()
    elif files is not None:
        images, labels = read_idx(files[0]), read_idx(files[1])
        if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1:] != (28, 28):
            got = f"{images.dtype} {images.shape}"
            raise DataError(f"{files[0]}: expected uint8 images [N, 28, 28], got {got}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(f"{files[1]}: expected {images.shape[0]} labels, got shape {labels.shape}")
        if labels.size and int(labels.max()) > 9:
            raise DataError(f"{files[1]}: labels must be 0..9, found {int(labels.max())}")
    else:
        looked = ", ".join(str(d) for d in dirs)
        raise DataError(
            f"{spec.name} {split} data not found (looked in {looked}); pass the directory holding "
            f"{prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz as data.root, "
            "or load online with download=True so torchvision can fetch them"
        )
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    if image_size != 28:  # default: 28 → 32 with 2 px of zeros (background) per side, then any resize
        x = torch.nn.functional.pad(x, (2, 2, 2, 2))
        if image_size is not None:
            x = resize_images(x, image_size)
    return ImageData(x, torch.from_numpy(labels.astype(np.int64)), list(tv_cls.classes), spec.name)


def load_mnist(
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    download: bool = False,
) -> ImageData:
    """MNIST as uint8 ``[N, 1, S, S]`` (S = 32 by default: zero-padded 2 px per side; 28 = native).

    Looks in ``root`` (or, when None, ``default_root()`` and ``../shared/data/mnist`` of a checkout) for the
    torchvision layout or flat IDX files. ``split="train"`` with only test files present falls back to the
    test split with a warning.
    """
    return _mnist_like(_idx_spec("mnist"), root, split, image_size, download)


def load_fashion_mnist(
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    download: bool = False,
) -> ImageData:
    """Fashion-MNIST as uint8 ``[N, 1, S, S]``, as :func:`load_mnist`.

    With ``root=None`` also finds Debian's ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``.
    """
    return _mnist_like(_idx_spec("fashion-mnist"), root, split, image_size, download)
