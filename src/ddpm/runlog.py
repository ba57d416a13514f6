"""A run directory's metrics log, ``RUN/metrics.jsonl``: one JSON object per line, appended as training and
evaluation go (``{"step": …, "loss": …}``, ``{"step": …, "val_loss": …}``, ``{"event": "eval", "step": …, "fid": …}``).

This module owns the file's format: the trainer and ``ddpm eval`` append through :func:`append`, the report,
``ddpm info`` and ``ddpm study`` read through :func:`read`. Records that carry an integer ``step`` are mirrored to
TensorBoard (``RUN/tensorboard``) when tensorboard is installed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from . import distributed as dist_lib

__all__ = ["FILENAME", "append", "append_event", "has_log", "log_path", "read"]

FILENAME = "metrics.jsonl"

_TENSORBOARD: dict[Path, Any] = {}  # run directory → SummaryWriter (None where tensorboard is absent)


def log_path(run_or_path: str | Path) -> Path:
    """The log file of a run directory, or ``run_or_path`` itself when it names a ``.jsonl`` file."""
    p = Path(run_or_path)
    return p if p.suffix == ".jsonl" else p / FILENAME


def has_log(run_or_path: str | Path) -> bool:
    """Whether the run (a directory, or its ``.jsonl`` path) has a metrics log yet."""
    return log_path(run_or_path).is_file()


def _jsonable(value: Any) -> Any:
    """Tensors and NumPy values as plain lists/numbers (``json.dumps`` ``default``)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def append(run_or_path: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line of the run's log (rank 0 only under ``torch.distributed``).

    Best effort: a failed write (a full disk) warns instead of raising, since metrics must not end a run (the
    checkpoints are what must not be lost). Numeric values of a record with an integer ``step`` are also written
    as TensorBoard scalars.
    """
    if not dist_lib.is_main():  # under torch.distributed only rank 0 writes metrics
        return
    path = log_path(run_or_path)
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
    except OSError as e:  # a full disk must not end a run: metrics are best effort, checkpoints are not
        warnings.warn(f"could not append to {path}: {e.strerror or e}", stacklevel=2)
    tb = _tensorboard(path.parent)
    if tb is not None and isinstance(record.get("step"), int):
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                tb.add_scalar(key, value, record["step"])
        tb.flush()


def append_event(run_or_path: str | Path, event: str, record: dict[str, Any]) -> None:
    """Append ``{"event": event, **record}`` (e.g. ``"eval"`` with the figures of :func:`evaluate_model`)."""
    append(run_or_path, {"event": event, **record})


def read(run_or_path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's log, in order ([] when there is none; lines that fail to parse are skipped)."""
    p = log_path(run_or_path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.append(rec)
    return out


def _tensorboard(run_dir: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` for the run (``run_dir/tensorboard``) when tensorboard is installed."""
    if run_dir not in _TENSORBOARD:
        try:
            from torch.utils.tensorboard import SummaryWriter

            _TENSORBOARD[run_dir] = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            _TENSORBOARD[run_dir] = None
    return _TENSORBOARD[run_dir]
