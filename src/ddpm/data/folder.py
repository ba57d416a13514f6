"""Image folders and zips, and the package's one image decoder.

:func:`decode_image` / :func:`read_image` turn image file bytes into uint8 pixels (16-bit grayscale scaled to
8 bits, palette images recognised as gray when they are); :data:`IMAGE_EXTENSIONS` is the one list of file
names treated as images. :func:`load_folder` builds a labelled :class:`ImageData` from a directory or
``.zip`` (one class per first-level sub-folder), and FID's ``load_images`` reads image files through
:func:`read_image`.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ._common import _one_line, _warn
from .container import DataError, ImageData

__all__ = ["IMAGE_EXTENSIONS", "MAX_IMAGE_FILE_BYTES", "decode_image", "load_folder", "read_image"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")
MAX_IMAGE_FILE_BYTES = 256 << 20  # larger image files (or zip members) are skipped as unreadable


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


def decode_image(raw: bytes, size: int | None = None, crop: bool = True) -> tuple[np.ndarray, bool]:
    """Image file bytes → ``(pixels, was_grayscale)``: pixels uint8 ``[H, W, 3]`` RGB.

    16-bit grayscale (PIL modes ``I;16*`` / ``I``) is scaled to 8 bits as ``round(v / 257)`` (65535 → 255);
    ``convert`` would clip every value above 255. ``was_grayscale`` is True for gray modes (1, L, LA, I, F,
    16-bit) and for palette images whose used colours are all gray; the three channels are then equal.

    Args:
        raw: the file's bytes (any format PIL reads).
        size: resize to ``size × size`` (PIL bicubic), after a centre crop to a square when ``crop``; None
            keeps the image's own size.
        crop: centre-crop non-square images before resizing (else they are stretched).

    Raises whatever PIL raises on unreadable data, and ``DecompressionBombWarning`` as an error for images
    over ``PIL.Image.MAX_IMAGE_PIXELS`` (they are refused, not decoded).
    """
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


def read_image(source: bytes | str | Path) -> np.ndarray:
    """An image file (a path, or its bytes) → uint8 ``[H, W, C]`` at its own size.

    C = 1 for grayscale images (see :func:`decode_image`: 16-bit ones scaled to 8 bits), else 3 (RGB).
    """
    raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    arr, gray = decode_image(raw)
    return np.ascontiguousarray(arr[..., :1]) if gray else arr


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
                arr, gray = decode_image(raw, size, crop)
            except Exception as e:  # PIL raises many types on corrupt data
                skipped_bad += 1
                first_bad = first_bad or f"{'/'.join(rel)} ({type(e).__name__}: {_one_line(e)[:80]})"
                continue
            if size is None:
                size = min(arr.shape[:2])
                if arr.shape[0] != arr.shape[1]:
                    arr, gray = decode_image(raw, size, crop)
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
