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
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "Batches",
    "DataError",
    "DatasetInfo",
    "ImageData",
    "dataset_info",
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
    "resize_images",
    "to_float",
    "to_uint8",
    "train_val_split",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")
MAX_IMAGE_FILE_BYTES = 256 << 20  # larger image files (or zip members) are skipped as unreadable
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class DataError(ValueError):
    """A dataset is missing, corrupt or unusable; the message is one line a user can act on."""


# --------------------------------------------------------------------------------------------------------
# Container
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Pixel conversions
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Where data lives
# --------------------------------------------------------------------------------------------------------


def default_root() -> Path:
    """Default download / search root: ``$DDPM_DATA_ROOT`` or ``~/.cache/ddpm/data``."""
    return Path(os.environ.get("DDPM_DATA_ROOT", "~/.cache/ddpm/data")).expanduser()


def _warn(message: str) -> None:
    """``warnings.warn`` attributed to the first caller outside this module."""
    import sys

    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        level, frame = level + 1, frame.f_back
    warnings.warn(message, stacklevel=level)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _shared_data_dir() -> Path:
    # A development checkout keeps read-only data beside the repository: <repo>/../shared/data.
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _unique(paths: Sequence[Path]) -> list[Path]:
    seen: list[Path] = []
    for p in paths:
        if p not in seen:
            seen.append(p)
    return seen


# --------------------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (IDX files)
# --------------------------------------------------------------------------------------------------------

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
        return _IdxSpec("mnist", "MNIST", (_shared_data_dir() / "mnist",))
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
            where = tv_root / spec.tv_class / "raw" if files is None else files[0].parent
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
            f"{spec.name} {split} data not found (looked in {looked}); pass --data-root DIR holding "
            f"{prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz, "
            "or run online with download=True so torchvision can fetch them"
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


# --------------------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------------------

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
    search = [Path(root).expanduser()] if root is not None else [default_root(), _shared_data_dir()]
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
                "or cifar10-jpeg.zip); pass --data-root DIR holding one of them, "
                "or run online with download=True so torchvision can fetch it"
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


# --------------------------------------------------------------------------------------------------------
# Folder / zip of images
# --------------------------------------------------------------------------------------------------------


def _safe_member(name: str) -> tuple[str, ...] | None:
    """A zip member name as path parts if it is a safe relative path, else None (absolute, drive, '..')."""
    name = name.replace("\\", "/")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in parts or not parts:
        return None
    return parts


def _hidden(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _list_zip(zf: zipfile.ZipFile) -> tuple[dict[tuple[str, ...], zipfile.ZipInfo], int]:
    """``{path parts: member}`` of the regular files, and the number of unsafe entries refused."""
    entries, unsafe = {}, 0
    for info in zf.infolist():
        if info.is_dir():
            continue
        parts = _safe_member(info.filename)
        if parts is None:
            unsafe += 1
        elif not _hidden(parts):
            entries[parts] = info
    return entries, unsafe


def _split_base(rel_paths: Sequence[tuple[str, ...]], split: str) -> tuple[tuple[str, ...], bool]:
    """Common prefix to strip (a lone top folder) and whether the data has train/test split folders."""
    prefix: tuple[str, ...] = ()
    tops = {p[0] for p in rel_paths if len(p) > 1}
    if len(tops) == 1 and all(len(p) > 1 for p in rel_paths):
        top = next(iter(tops))
        second = {p[1] for p in rel_paths if len(p) > 2}
        if top not in ("train", "test", split) and second & {"train", "test", split}:
            prefix = (top,)
    inner = {p[len(prefix)] for p in rel_paths if len(p) > len(prefix) + 1}
    return prefix, bool(inner & {"train", "test", split})


def _decode(raw: bytes, size: int | None, crop: bool) -> tuple[np.ndarray, bool]:
    """Image bytes → (uint8 [H, W, 3] RGB, was_grayscale). Raises on unreadable data."""
    from PIL import Image

    with warnings.catch_warnings():  # over Image.MAX_IMAGE_PIXELS: refuse, do not just warn and decode it
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            mode = im.mode
            if mode.startswith("I;16") or mode == "I":  # 16-bit gray: convert() would clip everything at 255
                a = np.asarray(im, dtype=np.float64)
                rgb = Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)).convert("RGB")
            else:
                rgb = im.convert("RGB")
    if size is not None and rgb.size != (size, size):
        w, h = rgb.size
        if crop and w != h:
            s = min(w, h)
            rgb = rgb.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(rgb, dtype=np.uint8)
    gray = mode in ("1", "L", "LA", "I", "F") or mode.startswith("I;16")
    if mode == "P":  # a palette image is gray when its used colours are
        gray = bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())
    return arr, gray


def _luma(x: torch.Tensor) -> torch.Tensor:
    """uint8 RGB ``[N, 3, H, W]`` → uint8 gray ``[N, 1, H, W]`` with PIL's ``convert("L")`` weights."""
    w = torch.tensor([19595, 38470, 7471], dtype=torch.int64).view(1, 3, 1, 1)
    return (((x.to(torch.int64) * w).sum(1, keepdim=True) + 0x8000) >> 16).to(torch.uint8)


def load_folder(
    root: str | Path,
    split: str = "train",
    image_size: int | None = None,
    download: bool = False,
    channels: int | None = None,
    crop: bool = True,
    max_per_class: int | None = None,
) -> ImageData:
    """A directory or ``.zip`` of images (png/jpg/jpeg/bmp/webp/gif) as uint8 ``[N, C, S, S]``.

    Layout: if ``root/train`` / ``root/test`` exist (in a zip, also under one top folder), images are taken
    from ``root/<split>``; otherwise from ``root``. The class of an image is its first sub-folder below that
    (sorted names → labels 0..K-1); images lying directly in it form one class named after the folder.
    Zip members are read in memory (nothing is extracted); absolute or ``..`` entries are refused.

    Args:
        image_size: output side S; images are center-cropped to a square (``crop=True``) and resized with PIL
            bicubic. None: the shorter side of the first image.
        channels: 1 (gray, "L") or 3 (RGB); None → 1 if every image is grayscale, else 3.
        max_per_class: read at most this many images per class (the first, in name order); None = all.

    Unreadable and non-image files are skipped, with the counts in one warning; finding no image is an error.
    """
    del download  # nothing to download
    if channels not in (None, 1, 3):
        raise DataError(f"folder: channels must be 1 or 3, got {channels}")
    root = Path(root).expanduser()
    zf: zipfile.ZipFile | None = None
    unsafe = 0
    if root.is_file():
        try:
            zf = zipfile.ZipFile(root)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"folder: {root} is not a readable zip file ({_one_line(e)})") from e
        members, unsafe = _list_zip(zf)
        rels = list(members)
    elif root.is_dir():
        rels = [p.relative_to(root).parts for p in root.rglob("*") if p.is_file()]
        rels = [p for p in rels if not _hidden(p)]
        members = {}
    else:
        raise DataError(f"folder: {root} does not exist; pass a directory or .zip of images")

    prefix, has_splits = _split_base(rels, split)
    base = (*prefix, split) if has_splits else prefix
    chosen = sorted(p[len(base) :] for p in rels if p[: len(base)] == base and len(p) > len(base))
    if has_splits and not chosen:
        raise DataError(f"folder: {root} has split folders but none named {split!r}")
    top_name = base[-1] if base else (root.stem if zf is not None else root.name)

    images: list[np.ndarray] = []
    class_of: list[str] = []
    skipped_other, skipped_bad, all_gray, size = 0, 0, True, image_size
    per_class: dict[str, int] = {}
    first_bad = ""
    try:
        for parts in chosen:
            cls = parts[0] if len(parts) > 1 else top_name
            if not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
                skipped_other += 1
                continue
            if max_per_class is not None and per_class.get(cls, 0) >= max_per_class:
                continue
            rel = (*base, *parts)
            try:
                nbytes = members[rel].file_size if zf is not None else root.joinpath(*rel).stat().st_size
                if nbytes > MAX_IMAGE_FILE_BYTES:  # e.g. a zip bomb: never inflate it into memory
                    raise DataError(f"{nbytes >> 20} MiB, over the {MAX_IMAGE_FILE_BYTES >> 20} MiB limit")
                raw = zf.read(members[rel]) if zf is not None else root.joinpath(*rel).read_bytes()
                arr, gray = _decode(raw, size, crop)
            except Exception as e:  # PIL raises many types on corrupt data
                skipped_bad += 1
                first_bad = first_bad or f"{'/'.join(rel)} ({type(e).__name__}: {_one_line(e)[:80]})"
                continue
            if size is None:
                size = min(arr.shape[:2])
                if arr.shape[0] != arr.shape[1]:
                    arr, gray = _decode(raw, size, crop)
            images.append(arr)
            class_of.append(cls)
            per_class[cls] = per_class.get(cls, 0) + 1
            all_gray &= gray
    finally:
        if zf is not None:
            zf.close()

    if skipped_other or skipped_bad or unsafe:
        notes = []
        if skipped_bad:
            notes.append(f"{skipped_bad} unreadable image file(s), e.g. {first_bad}")
        if skipped_other:
            notes.append(f"{skipped_other} non-image file(s)")
        if unsafe:
            notes.append(f"{unsafe} unsafe zip entr{'y' if unsafe == 1 else 'ies'} (absolute or '..' paths)")
        _warn(f"folder {root}: skipped " + ", ".join(notes))
    if not images:
        where = "/".join(base) or "."
        raise DataError(f"folder: no readable images in {root} (under {where!r}); expected png/jpg/… files")

    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    if channels == 1 or (channels is None and all_gray):
        x = x[:, :1] if all_gray else _luma(x)
    names = sorted(set(class_of))
    index = {c: i for i, c in enumerate(names)}
    labels = torch.tensor([index[c] for c in class_of], dtype=torch.int64)
    return ImageData(x.contiguous(), labels, names, "folder")


# --------------------------------------------------------------------------------------------------------
# scikit-learn digits and synthetic blobs (no files needed)
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Splits and batching
# --------------------------------------------------------------------------------------------------------


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (e.g. (seed, epoch)) with no simple collisions."""
    digest = hashlib.blake2b(":".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def train_val_split(data: ImageData, val_fraction: float, seed: int) -> tuple[ImageData, ImageData]:
    """Seeded random split into (train, val); ``round(N · val_fraction)`` examples go to val.

    Both parts keep the original order of their examples. MNIST's 60k with 0.2 → 48k / 12k.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(data)
    n_val = int(round(n * val_fraction))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_mix_seed(seed, n)))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return data.subset(train_idx), data.subset(val_idx)


class Batches:
    """Infinite, seeded, resumable, shardable batch iterator over an :class:`ImageData`.

    Epoch e uses the permutation drawn from ``torch.Generator`` seeded by (seed, e), and (with ``flip``) one
    horizontal-flip coin per permuted position from the same generator, so the order and the flips depend only
    on (seed, epoch, position), not on how the iteration was interrupted. With ``world_size > 1`` rank r takes
    positions ``r, r + W, r + 2W, …`` of the permutation truncated to a multiple of W (as
    ``DistributedSampler(drop_last=True)``): the ranks' examples are disjoint and they all see the same
    number of batches.

    Yields ``(x, y)``: float ``[B, C, H, W]`` in [-1, 1] and int64 labels ``[B]`` on the data's device.
    ``state_dict()`` is ``{"epoch", "position"}`` (position = examples of this rank's epoch already yielded).
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        seed: int = 0,
        *,
        shuffle: bool = True,
        flip: bool = False,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.shuffle, self.flip, self.drop_last = shuffle, flip, drop_last
        self.rank, self.world_size, self.dtype = rank, world_size, dtype
        self.per_rank = len(data) // world_size
        if self.per_rank < (batch_size if drop_last else 1):
            raise DataError(
                f"{data.name}: {len(data)} examples are too few for batch_size={batch_size} "
                f"x world_size={world_size} with drop_last={drop_last}"
            )
        self.epoch, self.position = 0, 0
        self._order: tuple[int, torch.Tensor, torch.Tensor | None] | None = None

    def __len__(self) -> int:
        """Batches per epoch (per rank)."""
        if self.drop_last:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    def epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's example indices ``[per_rank]`` in ``epoch``, and its flip mask (bool, or None)."""
        if self._order is None or self._order[0] != epoch:
            n = len(self.data)
            g = torch.Generator().manual_seed(_mix_seed(self.seed, epoch))
            perm = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
            flips = torch.rand(n, generator=g) < 0.5 if self.flip else None
            stop = self.per_rank * self.world_size
            idx = perm[:stop][self.rank :: self.world_size]
            fl = flips[:stop][self.rank :: self.world_size] if flips is not None else None
            self._order = (epoch, idx, fl)
        return self._order[1], self._order[2]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        limit = self.per_rank - self.batch_size if self.drop_last else self.per_rank - 1
        if self.position > limit:
            self.epoch, self.position = self.epoch + 1, 0
        idx, flips = self.epoch_order(self.epoch)
        sl = slice(self.position, self.position + self.batch_size)
        take = idx[sl].to(self.data.images.device)
        x = to_float(self.data.images[take], self.dtype)
        if flips is not None:
            f = flips[sl].to(x.device).view(-1, 1, 1, 1)
            x = torch.where(f, x.flip(-1), x)
        y = self.data.labels[take.to(self.data.labels.device)]
        self.position += int(take.shape[0])
        return x, y

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": int, "position": int}``: where the next batch starts."""
        return {"epoch": int(self.epoch), "position": int(self.position)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume exactly where :meth:`state_dict` was taken (same data, seed, batch size, sharding)."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


# --------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------


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


_INFO = {
    "mnist": DatasetInfo("mnist", 32, 1, 10, False, True, "MNIST digits, 28×28 zero-padded to 32×32"),
    "fashion-mnist": DatasetInfo("fashion-mnist", 32, 1, 10, False, True, "Fashion-MNIST, padded to 32×32"),
    "cifar10": DatasetInfo("cifar10", 32, 3, 10, True, True, "CIFAR-10, 32×32 RGB"),
    "folder": DatasetInfo("folder", None, None, None, False, True, "a directory or .zip of class folders"),
    "digits": DatasetInfo("digits", 16, 1, 10, False, False, "scikit-learn 8×8 digits, upscaled to 16×16"),
    "gaussian-blobs": DatasetInfo("gaussian-blobs", 16, 1, 10, False, False, "synthetic blobs, 10 classes"),
}

DATASETS: dict[str, Callable[..., ImageData]] = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "folder": load_folder,
    "digits": load_digits,
    "gaussian-blobs": load_gaussian_blobs,
}

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
        raise DataError("folder: pass --data-root DIR (a directory or .zip of images)")
    data = DATASETS[key](root=root, split=split, image_size=image_size, download=download, **options)
    return data
