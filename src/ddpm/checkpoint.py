"""Checkpoints as state dicts + config, written atomically and loaded without running code.

A checkpoint is a directory ``step-NNNNNNN/`` holding

- ``model.safetensors`` and ``ema.safetensors`` — network weights (safetensors: no pickle at all);
- ``state.pt`` — optimizer, scaler, RNG and data-position state, loaded with ``torch.load(weights_only=True)``;
- ``config.json`` — the fully resolved run config, and ``meta.json`` — step, format version, library version.

Writes go to a hidden temporary directory that is fsync'ed and then renamed into place, so a crash leaves either
the previous checkpoints or a complete new one, never a half-written ``step-*`` directory.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .config import Config, ConfigError, config_from_dict, config_to_dict

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "latest_checkpoint",
    "resolve_checkpoint",
    "load_weights_into",
    "FORMAT_VERSION",
]

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """A missing, truncated, unsafe or mismatched checkpoint; the message is one line for the user."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    path: Path
    step: int
    config: Config
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any] | None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_checkpoint(
    ckpt_root: str | Path,
    step: int,
    config: Config,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor] | None = None,
    train_state: dict[str, Any] | None = None,
    keep: int | None = None,
    name: str | None = None,
) -> Path:
    """Write ``ckpt_root/step-NNNNNNN`` atomically and keep only the newest ``keep`` step directories.

    Returns the final directory. On any error (full disk, permissions) the temporary directory is removed, the
    previous checkpoints are untouched, and the exception propagates.
    """
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / (name or f"step-{step:07d}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        save_file(_contiguous(model_state), str(tmp / "model.safetensors"), metadata={"step": str(step)})
        if ema_state is not None:
            save_file(_contiguous(ema_state), str(tmp / "ema.safetensors"), metadata={"step": str(step)})
        if train_state is not None:
            torch.save(train_state, tmp / "state.pt")
        (tmp / "config.json").write_text(json.dumps(config_to_dict(config), indent=2))
        meta = {"step": step, "format_version": FORMAT_VERSION, "ddpm_version": __version__}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. "best"): swap the old one out atomically
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=root))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None and keep > 0:
        for old_dir in list_checkpoints(root)[:-keep]:
            if old_dir != final:
                shutil.rmtree(old_dir, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Complete ``step-*`` directories under ``ckpt_root``, oldest first (temporary ones are ignored)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [
        p for _, p in sorted(found) if (p / "meta.json").is_file() and (p / "model.safetensors").is_file()
    ]


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run directory, a ``checkpoints/`` directory, a checkpoint directory or one
    of its files. Raises :class:`CheckpointError` when there is none."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such file or directory: {p}")
    if p.is_file():
        p = p.parent
    if (p / "meta.json").is_file() and (p / "model.safetensors").is_file():
        return p
    for root in (p / "checkpoints", p):
        latest = latest_checkpoint(root)
        if latest is not None:
            return latest
    raise CheckpointError(
        f"no checkpoint found in {p} (expected checkpoints/step-NNNNNNN/ with model.safetensors)"
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None


def load_checkpoint(path: str | Path, with_state: bool = True) -> Checkpoint:
    """Load a checkpoint safely: weights through safetensors, state through ``torch.load(weights_only=True)``.

    A state file that would run code on unpickling is refused (``weights_only`` allows only tensors and plain
    containers); truncated or corrupt files raise :class:`CheckpointError` naming the file.
    """
    ckpt = resolve_checkpoint(path)
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
        cfg_raw = json.loads((ckpt / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {ckpt}/meta.json or config.json: {e}") from None
    if not isinstance(meta, dict) or meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{ckpt}: checkpoint format {meta.get('format_version')!r} is newer than this ddpm"
        )
    try:
        config = config_from_dict(cfg_raw)
    except ConfigError as e:
        raise CheckpointError(f"{ckpt}/config.json: {e}") from None
    model = _load_safetensors(ckpt / "model.safetensors")
    ema = _load_safetensors(ckpt / "ema.safetensors") if (ckpt / "ema.safetensors").is_file() else None
    state = None
    if with_state and (ckpt / "state.pt").is_file():
        state = load_state_file(ckpt / "state.pt")
    return Checkpoint(ckpt, int(meta.get("step", 0)), config, model, ema, state)


def load_state_file(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with one clear error for unsafe or corrupt files."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).splitlines()[0] if str(e) else "unpickling error"
        raise CheckpointError(f"refusing {path}: not a plain weights-only state file ({first})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: truncated or corrupt ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of training state, got {type(state).__name__}")
    return state


def load_weights_into(module: nn.Module, state: dict[str, torch.Tensor], what: str = "checkpoint") -> None:
    """``module.load_state_dict(state)`` with one clear error naming missing, unexpected or mis-shaped keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} shape mismatches (first: {k} is {tuple(state[k].shape)} in the {what}, "
                f"{tuple(own[k].shape)} in the model)"
            )
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        raise CheckpointError(f"{what} does not match the model architecture: " + "; ".join(parts))
    module.load_state_dict(state)
