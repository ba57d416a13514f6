"""The one cache root of ddpm: ``$DDPM_CACHE``, else ``~/.cache/ddpm``. FID reference statistics live in its
``fid/``, evaluation classifiers in ``classifiers/`` and downloaded datasets in ``data/`` (unless
``$DDPM_DATA_ROOT`` says otherwise)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "cache_root"]


def cache_root() -> Path:
    """``$DDPM_CACHE`` (``~`` expanded) if set, else ``~/.cache/ddpm``."""
    root = os.environ.get("DDPM_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "ddpm"


def cache_dir(kind: str) -> Path:
    """The cache's sub-directory for one kind of file (``fid``, ``classifiers``, ``data``)."""
    return cache_root() / kind
