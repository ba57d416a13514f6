"""Training: AdamW, warm-up, gradient clipping, EMA, mixed precision, accumulation, validation, early stopping,
atomic checkpoints with exact resume, metrics and sample grids.

- :mod:`.trainer` — :class:`Trainer`: setup and one optimizer step; :mod:`.loop` — ``fit()``;
  :mod:`.checkpointing` — fresh start, exact resume, saves; :mod:`.progress` — the counters saved as a unit and
  the best weights of early stopping; :mod:`.ema` — :class:`EMA`; :mod:`.setup` — config checks and datasets;
  :mod:`ddpm.runlog` owns ``metrics.jsonl``.

Only training code imports this package; inference builds through :mod:`ddpm.builders` and :mod:`ddpm.runtime`
(``build_*`` / ``resolve_*`` / ``autocast_context`` are re-exported here under their old import path).
"""

from ..builders import build_diffusion, build_model, resolve_config
from ..runtime import autocast_context, resolve_device, resolve_precision
from .ema import EMA
from .progress import TrainProgress
from .setup import TrainingError, load_datasets, validate_config
from .trainer import Trainer

__all__ = [
    "EMA",
    "Trainer",
    "TrainProgress",
    "TrainingError",
    "build_diffusion",
    "build_model",
    "load_datasets",
    "resolve_config",
    "autocast_context",
    "resolve_device",
    "resolve_precision",
    "validate_config",
]
