"""The run directory's ``metrics.jsonl``: one JSON record per line, appended by rank 0 only, mirrored to
TensorBoard (``RUN/tensorboard``) when tensorboard is installed."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from .. import distributed as dist_lib


def append_record(path: Path, record: dict[str, Any]) -> None:
    if not dist_lib.is_main():  # under torch.distributed only rank 0 writes metrics
        return
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:  # a full disk must not end a run: metrics are best effort, checkpoints are not
        warnings.warn(f"could not append to {path}: {e.strerror or e}", stacklevel=2)
    tb = _tensorboard(path.parent)
    if tb is not None and isinstance(record.get("step"), int):
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                tb.add_scalar(key, value, record["step"])
        tb.flush()


_TENSORBOARD: dict[Path, Any] = {}


def _tensorboard(run_dir: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` for the run (``run_dir/tensorboard``) when tensorboard is installed."""
    if run_dir not in _TENSORBOARD:
        try:
            from torch.utils.tensorboard import SummaryWriter

            _TENSORBOARD[run_dir] = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            _TENSORBOARD[run_dir] = None
    return _TENSORBOARD[run_dir]
