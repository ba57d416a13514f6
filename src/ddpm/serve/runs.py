"""The runs a ``ddpm serve`` page serves: loaded once at start-up (a missing or corrupt run fails there), then
their checkpoints by name, a few kept in memory; and the run directory's log, config and training grids.

A request names a run by its label and a checkpoint by its directory name; anything else is refused, so the
page never reads a path a request chose.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .. import runlog
from ..checkpoint import CheckpointError, list_checkpoints, resolve_checkpoint
from ..pipeline import LoadedModel, load_model
from .limits import RequestError

__all__ = ["LATEST", "Runs"]

LATEST = "latest"


class Runs:
    """Run directories (or checkpoints) by label, each loadable at any of its checkpoints, EMA or raw."""

    def __init__(self, paths: list[str | Path], device: str = "auto", cache_size: int = 4) -> None:
        if not paths:
            raise CheckpointError("no run to serve")
        self.device, self.cache_size = device, cache_size
        self._dirs: dict[str, Path] = {}
        self._cache: OrderedDict[tuple[str, str, bool], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        for p in map(Path, paths):
            lm = load_model(p, ema=True, device=device)  # CheckpointError: one line at start-up
            label, k = p.resolve().name or str(p), 2
            while label in self._dirs:
                label, k = f"{p.resolve().name} ({k})", k + 1
            self._dirs[label] = p
            self._cache[(label, self._source(label, LATEST)[0], True)] = lm

    @property
    def labels(self) -> list[str]:
        return list(self._dirs)

    def run_dir(self, label: Any) -> Path:
        """The directory of a served run (a request naming anything else is refused)."""
        if not isinstance(label, str) or label not in self._dirs:
            raise RequestError(f"run must be one of {', '.join(self._dirs)}; got {label!r}")
        p = self._dirs[label]
        if (p / "meta.json").is_file():  # a checkpoint directory was served: its run is two levels up
            return p.parent.parent if p.parent.name == "checkpoints" else p
        return p

    def checkpoints(self, label: Any) -> list[str]:
        """``latest`` and the names of the run's checkpoint directories, newest first."""
        names = [c.name for c in list_checkpoints(self.run_dir(label) / "checkpoints")]
        return [LATEST, *reversed(names)]

    def model(self, label: Any, checkpoint: Any = LATEST, ema: Any = True) -> LoadedModel:
        """The run's network at ``checkpoint`` (a name from :meth:`checkpoints`), EMA weights unless ``ema`` is
        False; loaded on first use and kept among the ``cache_size`` most recent."""
        if not isinstance(ema, bool):
            raise RequestError(f"ema must be true or false, got {ema!r}")
        if checkpoint in (None, ""):
            checkpoint = LATEST
        name, src = self._source(label, checkpoint)
        key = (label, name, ema)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            lm = load_model(src, ema=ema, device=self.device)
        except CheckpointError as e:
            raise RequestError(str(e)) from None
        with self._lock:
            self._cache[key] = lm
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return lm

    def _source(self, label: Any, checkpoint: Any) -> tuple[str, Path]:
        """(checkpoint name, path to load): ``latest`` is the newest checkpoint now (a run may be training)."""
        names = self.checkpoints(label)
        if checkpoint not in names:
            raise RequestError(f"run {label!r} has no checkpoint {checkpoint!r}")
        if checkpoint == LATEST:
            if len(names) == 1:  # a checkpoint directory served as it is
                return LATEST, self._dirs[label]
            checkpoint = names[1]
        return checkpoint, self.run_dir(label) / "checkpoints" / checkpoint

    def records(self, label: Any) -> list[dict[str, Any]]:
        """The run's ``metrics.jsonl`` records (:func:`ddpm.runlog.read`)."""
        return runlog.read(self.run_dir(label))

    def config(self, label: Any) -> dict[str, Any]:
        """The run's resolved config (``config.json``, else its newest checkpoint's)."""
        d = self.run_dir(label)
        for path in (d / "config.json", _checkpoint_config(d)):
            if path is not None and path.is_file():
                try:
                    data = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if isinstance(data, dict):
                    return data
        return {}

    def sample_grids(self, label: Any) -> list[Path]:
        """The grids written during training (``samples/step-NNNNNNN.png``), oldest first."""
        d = self.run_dir(label) / "samples"
        return sorted(d.glob("step-*.png")) if d.is_dir() else []


def _checkpoint_config(run_dir: Path) -> Path | None:
    try:
        return resolve_checkpoint(run_dir) / "config.json"
    except CheckpointError:
        return None
