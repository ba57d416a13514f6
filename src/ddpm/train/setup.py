"""What a run is checked against before anything is loaded or written, and the datasets it trains on."""

from __future__ import annotations

import torch

from .. import data as data_lib
from ..config import Config, ConfigError
from ..threads import validate_threads


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. too many non-finite losses); the message is one line for the user."""


def validate_config(cfg: Config) -> None:
    """Refuse values a run cannot work with before anything is loaded or written (one ConfigError line each);
    what the config dataclasses and the optimizer already check is not repeated here."""
    tc, d = cfg.train, cfg.data
    at_least = {
        "train.batch_size": (tc.batch_size, 1),
        "train.grad_accum": (tc.grad_accum, 1),
        "train.log_every": (tc.log_every, 1),
        "train.sample_n": (tc.sample_n, 1),
        "train.fid_every": (tc.fid_every if tc.fid_every is not None else 1, 1),
        "train.fid_n": (tc.fid_n, 2),  # a covariance needs two images
        "train.fid_ref_n": (tc.fid_ref_n if tc.fid_ref_n is not None else 2, 2),
        "train.val_batches": (tc.val_batches, 1),
        "train.max_nonfinite": (tc.max_nonfinite, 0),
        "data.limit": (d.limit if d.limit is not None else 1, 1),
        "data.image_size": (d.image_size if d.image_size is not None else 1, 1),
    }
    for key, (value, low) in at_least.items():
        if value < low:
            raise ConfigError(f"{key} must be at least {low}, got {value}")
    for key, share in (("train.ema_decay", tc.ema_decay), ("train.label_dropout", tc.label_dropout)):
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1], got {share}")
    if not 0.0 <= d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
    try:
        validate_threads(tc.threads, "train.threads")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not 0 <= tc.seed < 2**62:  # torch seeds are 64-bit; seed + k must fit
        raise ConfigError(f"train.seed must be in [0, 2**62), got {tc.seed}")
    dc = cfg.diffusion
    if dc.variance == "learned_range" and dc.loss == "mse":
        # L_simple does not depend on Σ: the variance channels would get no gradient and sampling would use an
        # untrained Σ. Improved DDPM (Nichol & Dhariwal 2021 §3.1) trains Σ with L_vlb (eq. 16: L_hybrid).
        raise ConfigError(
            "diffusion.variance=learned_range needs diffusion.loss=hybrid (or vlb): with loss=mse the variance "
            "is never trained"
        )


def load_datasets(cfg: Config) -> tuple[data_lib.ImageData, data_lib.ImageData | None]:
    """Load the configured dataset and split off the validation set (seeded by ``train.seed``)."""
    d = cfg.data
    data = data_lib.load(d.name, root=d.root, split=d.split, image_size=d.image_size, download=d.download)
    if d.limit is not None:
        data = data.subset(torch.arange(min(d.limit, len(data))))
    if d.val_fraction > 0:
        train, val = data_lib.train_val_split(data, d.val_fraction, cfg.train.seed)
        return train, val
    return data, None
