"""Reference statistics: the images FID is measured against (a dataset by name, a folder, ``.zip`` or ``.npz`` of
images, or a statistics file) and their cache, ``$DDPM_CACHE/fid`` (default ``~/.cache/ddpm/fid``), keyed by
how the statistics were made so that different networks, precisions, sizes or n never share an entry.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import DataError
from ..data.folder import IMAGE_EXTENSIONS, read_image
from .fid import FeatureStats, compute_stats, fid_from_stats, is_stats_file
from .inception import InceptionFeatures, _to_nchw_uint8

__all__ = ["default_cache_dir", "fid_from_images", "load_images", "reference_stats"]


def load_images(
    path: str | os.PathLike, n: int | None = None, pattern: str | None = None, seed: int | None = None
) -> torch.Tensor:
    """Load uint8 images from a ``.npz`` (key ``x``, [N,H,W,C] as ``ddpm sample`` writes), a folder of
    image files (recursively; the suffixes of ``ddpm.data.IMAGE_EXTENSIONS``), or a ``.zip`` of them.

    Files are decoded by ``ddpm.data.read_image``, the package's one image decoder: 16-bit grayscale is
    scaled to 8 bits (``round(v / 257)``), never clipped.

    Args:
        path: the file or folder.
        n: keep n images: the first n in sorted name order, or a random n (kept in sorted order) if ``seed``.
        pattern: for folders/zips, an ``fnmatch`` pattern on the relative path (e.g. ``"test/*"``).
        seed: random subset selection (see ``n``).
    Returns:
        uint8 tensor [N, C, H, W]; C = 1 if every image is grayscale, else 3 (gray images are repeated).
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            key = "x" if "x" in z.files else (z.files[0] if len(z.files) == 1 else None)
            if key is None:
                raise ValueError(f"{path}: expected the images under key 'x', found {z.files}")
            arr = z[key]
        if arr.dtype != np.uint8:
            raise ValueError(f"{path}: expected uint8 images, got {arr.dtype}")
        x = torch.from_numpy(arr)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        return _select(x, n, seed).contiguous()

    if path.is_dir():
        names = sorted(
            str(p.relative_to(path)) for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
        )
        names = [s for s in names if pattern is None or fnmatch.fnmatch(s, pattern)]
        names = _select(names, n, seed)
        arrays = [_read_image(path / s, path, s) for s in names]
    elif path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = sorted(s for s in zf.namelist() if Path(s).suffix.lower() in IMAGE_EXTENSIONS)
            names = [s for s in names if pattern is None or fnmatch.fnmatch(s, pattern)]
            names = _select(names, n, seed)
            arrays = [_read_image(zf.read(s), path, s) for s in names]
    else:
        raise FileNotFoundError(f"{path}: not a .npz of images, a folder of image files or a .zip of them")
    if not arrays:
        kinds = "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise ValueError(f"{path}: no {kinds} images found" + (f" matching {pattern!r}" if pattern else ""))
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"{path}: images have different sizes {sorted(shapes)[:4]}; resize them first")
    if any(a.shape[2] == 3 for a in arrays):
        arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _read_image(source: bytes | Path, path: Path, name: str) -> np.ndarray:
    """``ddpm.data.read_image`` (uint8 [H, W, 1 or 3]); an unreadable file raises one line naming it."""
    try:
        return read_image(source)
    except Exception as e:  # PIL raises many types on corrupt data
        if isinstance(e, OSError) and e.filename is not None:  # the file itself could not be read
            raise
        why = " ".join(str(e).split()) or "unreadable"
        raise DataError(f"{path}: cannot read the image {name} ({type(e).__name__}: {why})") from e


def _select(items: Any, n: int | None, seed: int | None) -> Any:
    total = len(items)
    if n is None or n >= total:
        return items
    if seed is None:
        return items[:n]
    idx = np.sort(np.random.default_rng(seed).choice(total, n, replace=False))
    return items[torch.from_numpy(idx)] if isinstance(items, torch.Tensor) else [items[i] for i in idx]


def default_cache_dir() -> Path:
    """``$DDPM_CACHE/fid`` if set, else ``~/.cache/ddpm/fid``."""
    from ..cache import cache_dir

    return cache_dir("fid")


def reference_stats(
    ref: Any,
    split: str = "train",
    n: int | None = None,
    *,
    extractor: InceptionFeatures | None = None,
    root: str | os.PathLike | None = None,
    image_size: int | None = None,
    keep_features: bool = False,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> FeatureStats:
    """Reference statistics for FID, cached on disk.

    Args:
        ref: a statistics ``.npz`` (returned as is), a path of images (see :func:`load_images`), a dataset
            name for ``ddpm.data.load(name, root=root, split=split, image_size=image_size)``, or uint8 images
            / an ``ImageData``-like object (computed, not cached: there is nothing to key the cache on).
        split, root, image_size: passed to ``ddpm.data.load`` for dataset names.
        n: use n images (a random subset drawn with ``seed`` when the set is larger; all when None).
        extractor: an :class:`InceptionFeatures` (fp32 on CUDA/CPU when None); its fingerprint keys the cache.
        keep_features: also keep (and cache) the features, for KID.
        cache_dir: where ``.npz`` statistics are cached (default :func:`default_cache_dir`).
    Returns:
        :class:`FeatureStats` with ``meta`` recording dataset, split, n, image size and the fingerprint.
    """
    if isinstance(ref, (str, os.PathLike)):
        p = Path(ref)
        if p.suffix == ".npz" and p.is_file() and is_stats_file(p):
            return FeatureStats.load(p)
    if extractor is None:
        extractor = InceptionFeatures()

    if not isinstance(ref, (str, os.PathLike)):
        images = _select(_to_nchw_uint8(ref), n, seed)
        return compute_stats(images, extractor, keep_features=keep_features, meta={"dataset": "<in-memory>"})

    p = Path(ref)
    if p.exists():
        st = p.stat()
        source = {"dataset": str(p.resolve()), "split": None, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        name = p.stem
    else:
        source = {
            "dataset": str(ref),
            "split": split,
            "root": str(root) if root else None,
            "image_size": image_size,
        }
        name = f"{ref}-{split}"
    key = {**source, "n": n, "seed": seed if n is not None else None, "fingerprint": extractor.fingerprint}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache / f"{safe}-n{n if n is not None else 'all'}-{digest}.npz"
    if cache_file.is_file():
        stats = FeatureStats.load(cache_file)
        if not keep_features or stats.features is not None:
            return stats

    if p.exists():
        images = load_images(p, n=n, seed=seed if n is not None else None)
    else:
        try:
            from ddpm import data as ddpm_data
        except ImportError as e:
            raise ValueError(
                f"{ref!r} is neither a file nor a known dataset (ddpm.data is unavailable)"
            ) from e
        kwargs: dict[str, Any] = {"root": root, "split": split}
        if image_size is not None:
            kwargs["image_size"] = image_size
        images = _select(_to_nchw_uint8(ddpm_data.load(str(ref), **kwargs)), n, seed)
    stats = compute_stats(images, extractor, keep_features=keep_features, meta={**key, "cache_key": digest})
    stats.save(cache_file)
    return stats


def _as_stats(
    x: Any, extractor: InceptionFeatures | None, n: int | None
) -> tuple[FeatureStats, InceptionFeatures | None]:
    if isinstance(x, FeatureStats):
        return x, extractor
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if path.suffix == ".npz" and is_stats_file(path):
            return FeatureStats.load(path), extractor
        x = load_images(path, n=n, seed=0)
    elif n is not None:
        x = _select(_to_nchw_uint8(x), n, seed=0)
    extractor = extractor if extractor is not None else InceptionFeatures()
    return compute_stats(x, extractor), extractor


def fid_from_images(
    a: Any, b: Any, extractor: InceptionFeatures | None = None, n: int | None = None, warn: bool = True
) -> float:
    """FID between two image sets.

    Each of ``a`` and ``b`` may be uint8 images (array/tensor, ``.images`` object or iterable of batches,
    see :func:`compute_stats`), a path understood by :func:`load_images`, a statistics ``.npz`` written by
    :meth:`FeatureStats.save`, or a :class:`FeatureStats`. ``n`` limits image inputs to a random subset
    of n (seed 0) when they hold more.
    Warns (:class:`SmallSampleWarning`) below 10,000 images.
    """
    sa, extractor = _as_stats(a, extractor, n)
    sb, extractor = _as_stats(b, extractor, n)
    return fid_from_stats(sa, sb, warn=warn)
