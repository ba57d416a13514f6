"""Checkpoints as state dicts + config, written atomically and loaded without running code.

A checkpoint is a directory ``step-NNNNNNN/`` holding

- ``model.safetensors`` and ``ema.safetensors`` — network weights (safetensors: no pickle at all);
- ``state.pt`` — optimizer, scaler, RNG and data-position state, loaded with ``torch.load(weights_only=True)``;
- ``config.json`` — the fully resolved run config, and ``meta.json`` — step, format version, library version.

Writes go to a hidden temporary directory that is fsync'ed and then renamed into place, so a crash leaves either
the previous checkpoints or a complete new one, never a half-written ``step-*`` directory. Old checkpoints are
pruned by renaming them to a hidden name first, for the same reason. A failed write (full disk, permissions)
raises :class:`CheckpointError` and leaves the previous checkpoints as they were; hidden leftovers of a killed
writer are removed (or, for a checkpoint being replaced, restored) by :func:`recover_checkpoints`, which every
save runs first.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
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
    "recover_checkpoints",
    "FORMAT_VERSION",
]

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
# Hidden work directories: ".<final>.tmp-XXXX" (being written), ".<final>.old-XXXX" (a checkpoint being replaced,
# inside it "<final>"), ".<final>.del-XXXX" (being pruned).
_WORK_DIR = re.compile(r"^\.(?P<final>[^/]+)\.(?P<kind>tmp|old|del)-[^/]*$")
CHECKPOINT_FILES = ("model.safetensors", "ema.safetensors", "state.pt", "config.json", "meta.json")


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


def recover_checkpoints(ckpt_root: str | Path) -> list[str]:
    """Clean up after a writer that was killed: restore a checkpoint that was being replaced (moved aside but
    not yet swapped back) and delete hidden temporary, replaced and pruned directories.

    Only the process that writes checkpoints should call this (:func:`save_checkpoint` does, and the trainer on
    resume): a concurrent writer's temporary directory would look abandoned. Returns what was done, one line
    per item; errors are ignored (another process may be recovering the same directory).
    """
    root = Path(ckpt_root)
    done: list[str] = []
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return done
    for p in entries:
        m = _WORK_DIR.match(p.name)
        if m is None or not p.is_dir():
            continue
        final = root / m.group("final")
        moved = p / m.group("final")
        try:
            if m.group("kind") == "old" and moved.is_dir() and not final.exists():
                os.replace(moved, final)
                done.append(f"restored {final.name} (its replacement was interrupted)")
            shutil.rmtree(p)
            done.append(f"removed {p.name}")
        except OSError:
            continue
    if done:
        _fsync_dir(root)
    return done


def _write_error(e: BaseException, final: Path) -> CheckpointError:
    """One line for a failed checkpoint write, whatever raised it (OSError; safetensors and torch.save report a full
    disk as SafetensorError / RuntimeError)."""
    if isinstance(e, OSError) and e.strerror:
        why = e.strerror
    else:
        why = " ".join(str(e).split()) or type(e).__name__
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    try:
        full = full or shutil.disk_usage(final.parent).free < (1 << 20)
    except OSError:
        pass
    hint = " (the disk is full)" if full and "space" not in why.lower() else ""
    return CheckpointError(f"cannot write checkpoint {final}: {why}{hint}")


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

    Returns the final directory. A failed write (full disk, permissions: OSError, or the SafetensorError /
    RuntimeError that safetensors and ``torch.save`` raise for them) removes the temporary directory, leaves the
    previous checkpoints untouched and raises :class:`CheckpointError` with one line; an interrupt propagates as is.
    """
    root = Path(ckpt_root)
    final = root / (name or f"step-{step:07d}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        recover_checkpoints(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    except OSError as e:
        raise _write_error(e, final) from e
    old: Path | None = None
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
        if final.exists():  # re-saving the same step (e.g. "best"): move the old one aside, then swap
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=root))
            os.replace(final, old / final.name)
            os.replace(tmp, final)  # a crash between the two renames is undone by recover_checkpoints
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not final.exists() and (old / final.name).is_dir():
            with contextlib.suppress(OSError):  # put the replaced checkpoint back
                os.replace(old / final.name, final)
        if old is not None and final.exists():
            shutil.rmtree(old, ignore_errors=True)
        if isinstance(e, (OSError, SafetensorError, RuntimeError)):
            raise _write_error(e, final) from e
        raise
    if keep is not None and keep > 0:
        for old_dir in list_checkpoints(root)[:-keep]:
            if old_dir != final:
                _remove_checkpoint(old_dir)
    return final


def _remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint directory without ever leaving a half-deleted ``step-*``: rename it to a hidden name
    (atomic), then delete that."""
    try:
        gone = Path(tempfile.mkdtemp(prefix=f".{path.name}.del-", dir=path.parent))
        os.replace(path, gone / path.name)
    except OSError:
        return  # pruning is best effort: the checkpoint stays complete
    shutil.rmtree(gone, ignore_errors=True)


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
    meta = _read_json(ckpt / "meta.json")
    cfg_raw = _read_json(ckpt / "config.json")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{ckpt}/meta.json: expected a JSON object, got {type(meta).__name__}")
    version, step = meta.get("format_version", 0), meta.get("step", 0)
    if not _is_int(version) or not _is_int(step) or step < 0:
        raise CheckpointError(
            f"{ckpt}/meta.json is corrupt: format_version={version!r}, step={step!r} (expected integers)"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{ckpt}: checkpoint format {version} is newer than this ddpm ({FORMAT_VERSION}); upgrade ddpm"
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
    return Checkpoint(ckpt, step, config, model, ema, state)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_json(path: Path) -> Any:
    if not path.is_file():  # also refuses FIFOs and devices, which would block or never end
        raise CheckpointError(f"{path} is missing or not a regular file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"cannot read {path}: {' '.join(str(e).split()) or type(e).__name__}") from None


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
    problem = _state_problem(state)
    if problem:
        raise CheckpointError(f"{path} is not a valid training state: {problem}")
    return state


def _state_problem(st: dict[str, Any]) -> str | None:
    """What is wrong with the known entries of a training state (so that resuming from it fails with one clear
    line rather than deep inside the optimizer); None when they look right. Unknown keys are left alone."""

    def bad(key: str, want: str) -> str:
        return f"{key!r} should be {want}, got {type(st[key]).__name__}"

    for key in ("step", "ema_updates", "best_step", "bad_validations", "nonfinite_total"):
        if key in st and not _is_int(st[key]):
            return bad(key, "an integer")
    if _is_int(st.get("step")) and st["step"] < 0:
        return f"'step' is negative ({st['step']})"
    if "best_val" in st and not (isinstance(st["best_val"], (int, float)) and not math.isnan(st["best_val"])):
        return bad("best_val", "a number")
    for key in ("generator", "torch_rng"):
        if key in st and not (isinstance(st[key], torch.Tensor) and st[key].dtype == torch.uint8):
            return bad(key, "a uint8 RNG state tensor")
    for key in ("optimizer", "scheduler", "scaler", "batches"):
        if key in st and not isinstance(st[key], dict):
            return bad(key, "a dict")
    b = st.get("batches")
    if b is not None and not all(_is_int(b.get(k)) and b[k] >= 0 for k in ("epoch", "position")):
        return "'batches' should hold non-negative integers 'epoch' and 'position'"
    opt = st.get("optimizer")
    if opt is not None:
        groups = opt.get("param_groups")
        if not isinstance(opt.get("state"), dict) or not isinstance(groups, list):
            return "'optimizer' should hold 'state' (a dict) and 'param_groups' (a list)"
        if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
            return "'optimizer' param_groups should be dicts with a 'params' list"
    return None


def load_weights_into(module: nn.Module, state: dict[str, torch.Tensor], what: str = "checkpoint") -> None:
    """``module.load_state_dict(state)`` with one clear error naming missing, unexpected or mis-shaped keys."""
    own = module.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what}: expected a dict of tensors")
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
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{what} holds non-finite weights ({len(bad)} tensors, first: {bad[0]})")
    module.load_state_dict(state)
