"""Where dataset files are looked for, and the warning / one-line-message helpers the readers share."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

__all__ = ["default_root"]

_PACKAGE_DIR = os.path.dirname(__file__)  # warnings are attributed to the first caller outside this package


def default_root() -> Path:
    """Default download / search root: ``$DDPM_DATA_ROOT``, else the ``data/`` of :func:`ddpm.cache.cache_root`."""
    from ..cache import cache_dir

    root = os.environ.get("DDPM_DATA_ROOT")
    return Path(root).expanduser() if root else cache_dir("data")


def _warn(message: str) -> None:
    """``warnings.warn`` attributed to the first caller outside the ``ddpm.data`` package."""
    level = 2
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == _PACKAGE_DIR:
        level, frame = level + 1, frame.f_back
    warnings.warn(message, stacklevel=level)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _shared_data_dir() -> Path:
    # A development checkout keeps read-only data beside the repository: <repo>/../shared/data
    # (this file is <repo>/src/ddpm/data/_common.py).
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def _unique(paths: Sequence[Path]) -> list[Path]:
    seen: list[Path] = []
    for p in paths:
        if p not in seen:
            seen.append(p)
    return seen
