"""What a training run has done so far, beyond the optimizer's and the data's own state: the trainer's progress
counters (:class:`TrainProgress`, saved in every checkpoint's ``state.pt``) and the best weights that early stopping
goes back to (``checkpoints/best-NNNNNNN/``, written next to the step checkpoints).

A step checkpoint's ``best_step`` names the best-weights directory it needs; the trainer writes that directory
before the step checkpoint and, once the step checkpoint is complete, deletes the best-weights directories no
checkpoint needs any more. A run cut after its best validation and resumed thus restores the very weights the
uninterrupted run restores.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from torch import Tensor

from ..checkpoint import CheckpointError, _remove_checkpoint, load_checkpoint, save_checkpoint
from ..config import Config

__all__ = [
    "TrainProgress",
    "best_weights_name",
    "save_best_weights",
    "load_best_weights",
    "prune_best_weights",
]


@dataclass
class TrainProgress:
    """The trainer's counters, saved and restored as a unit. Their keys sit at the top level of ``state.pt``, where
    checkpoints written before this class keep them too; a key such a checkpoint lacks keeps its default."""

    step: int = 0  # optimizer steps taken (skipped non-finite steps do not count)
    ema_updates: int = 0  # EMA updates so far: the EMA warm-up decay depends on them
    best_val: float = math.inf  # the lowest validation loss so far
    best_step: int = -1  # the step it was measured at (-1: no validation yet)
    bad_validations: int = 0  # validations since then that did not improve on it (early stopping)
    nonfinite_in_a_row: int = 0  # consecutive skipped steps (non-finite loss or gradient)
    nonfinite_total: int = 0
    elapsed_s: float = 0.0  # training wall-clock seconds over every invocation: the train.max_minutes budget
    best_fid: float = (
        math.inf
    )  # the lowest FID during training (train.fid_every), kept in checkpoints/best-fid
    best_fid_step: int = -1

    def state_dict(self) -> dict[str, int | float]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any], step: int = 0) -> TrainProgress:
        """The counters in a checkpoint's training state; ``step`` (the checkpoint's) stands in for a missing
        ``step``, and ``step`` for missing ``ema_updates`` (one update per step). Raises :class:`CheckpointError`
        for a value of the wrong type."""
        values: dict[str, Any] = {"step": step}
        values["ema_updates"] = state.get("step", step)
        for f in fields(cls):
            if f.name not in state:
                continue
            v = state[f.name]
            if f.type == "int" and not (isinstance(v, int) and not isinstance(v, bool)):
                raise CheckpointError(
                    f"training state: {f.name!r} should be an integer, got {type(v).__name__}"
                )
            if f.type == "float" and not (isinstance(v, (int, float)) and not isinstance(v, bool)):
                raise CheckpointError(
                    f"training state: {f.name!r} should be a number, got {type(v).__name__}"
                )
            values[f.name] = v
        if (
            math.isnan(values.get("best_val", 0.0))
            or math.isnan(values.get("best_fid", 0.0))
            or not 0 <= values.get("elapsed_s", 0.0) < math.inf
        ):
            raise CheckpointError("training state: 'best_val', 'best_fid' or 'elapsed_s' is out of range")
        return cls(**values)


def best_weights_name(step: int) -> str:
    """The directory (under ``checkpoints/``) of the best weights measured at ``step``."""
    return f"best-{step:07d}"


def save_best_weights(
    ckpt_dir: str | Path,
    step: int,
    config: Config,
    model_state: dict[str, Tensor],
    ema_state: dict[str, Tensor],
) -> Path:
    """Write ``ckpt_dir/best-NNNNNNN`` (model and EMA weights, config, meta) atomically, as a checkpoint without
    training state; raises :class:`CheckpointError` when it cannot."""
    return save_checkpoint(ckpt_dir, step, config, model_state, ema_state, None, name=best_weights_name(step))


def load_best_weights(ckpt_dir: str | Path, step: int) -> tuple[dict[str, Tensor], dict[str, Tensor]] | None:
    """The (model, EMA) weights of ``best-NNNNNNN`` for ``step``, or None when that directory is absent."""
    path = Path(ckpt_dir) / best_weights_name(step)
    if not (path / "meta.json").is_file():
        return None
    ck = load_checkpoint(path, with_state=False)
    if ck.ema is None:
        raise CheckpointError(f"{path} has no ema.safetensors")
    return ck.model, ck.ema


def prune_best_weights(ckpt_dir: str | Path, keep_step: int | None) -> None:
    """Delete every ``best-NNNNNNN`` directory but the one for ``keep_step`` (all of them when None); other
    directories (``best-fid``) are left alone."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        return
    keep = best_weights_name(keep_step) if keep_step is not None else None
    for p in root.iterdir():
        if p.name.startswith("best-") and p.name[5:].isdigit() and p.name != keep and p.is_dir():
            _remove_checkpoint(p)


class _ProgressField:
    """A :class:`Trainer` attribute that lives in its :class:`TrainProgress` (``trainer.step`` is
    ``trainer.run_progress.step``)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        return self if obj is None else getattr(obj.run_progress, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj.run_progress, self.name, value)
