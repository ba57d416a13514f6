"""From a config to the objects it describes: the noise schedule + :class:`GaussianDiffusion`, the network, and
the config resolved against its dataset (channels, image size, flips).

Inference (``pipeline``, ``interop``, ``metrics``) and training both build through here.
"""

from __future__ import annotations

from dataclasses import replace

from .config import Config, ConfigError, DiffusionConfig
from .data import ImageData, dataset_info
from .diffusion import GaussianDiffusion
from .nn.unet import UNet
from .schedule import NoiseSchedule

__all__ = ["build_diffusion", "build_model", "resolve_config"]


def build_diffusion(cfg: DiffusionConfig) -> GaussianDiffusion:
    """The :class:`GaussianDiffusion` a config describes."""
    if cfg.schedule == "linear":
        schedule = NoiseSchedule.linear(cfg.timesteps, cfg.beta_start, cfg.beta_end)
    else:
        schedule = NoiseSchedule.cosine(cfg.timesteps, cfg.cosine_s)
    return GaussianDiffusion(
        schedule,
        prediction=cfg.prediction,
        variance=cfg.variance,
        loss=cfg.loss,
        vlb_weight=cfg.vlb_weight,
        weighting=cfg.weighting,
        min_snr_gamma=cfg.min_snr_gamma,
    )


def build_model(cfg: Config) -> UNet:
    """The (freshly initialised) network of a config."""
    return UNet(cfg.model)


def resolve_config(cfg: Config, data: ImageData | None = None) -> Config:
    """Fill in what the data decides: image channels and size, the network's output channels, and flips.

    With ``data=None`` the dataset's registered defaults stand in for the files (``--dry-run`` reads nothing).
    """
    info = dataset_info(cfg.data.name)
    if data is None:
        size = cfg.data.image_size or info.image_size or cfg.model.image_size
        c, n_classes = info.channels or cfg.model.in_channels, None
    else:
        size, c, n_classes = data.image_size, data.channels, data.num_classes
    out_c = build_diffusion(cfg.diffusion).output_channels(c)
    try:
        model = replace(cfg.model, in_channels=c, out_channels=out_c, image_size=size)
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    if n_classes is not None and model.num_classes is not None:
        if n_classes < 1:
            raise ConfigError("model.num_classes is set but the dataset has no labels")
        if n_classes > model.num_classes:
            raise ConfigError(
                f"model.num_classes={model.num_classes} but the dataset has {n_classes} classes"
            )
    flip = cfg.data.flip if cfg.data.flip is not None else info.flip
    return replace(cfg, model=model, data=replace(cfg.data, image_size=size, flip=flip))
