"""Typed, frozen run configuration: the schema, its JSON round trip and ``--set`` overrides.

A :class:`Config` has five sections — ``model`` (a :class:`~ddpm.nn.unet.UNetConfig`), ``diffusion``, ``data``,
``train`` and ``sample``. ``apply_overrides(cfg, ["train.lr=1e-4", ...])`` returns a new config; unknown keys and
values of the wrong type raise :class:`ConfigError` with one clear line. The resolved config (every field) is
written as ``config.json`` next to every run and read back with :func:`config_from_dict`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from .diffusion import LossType, Prediction, Variance, Weighting
from .nn.presets import unet_config
from .nn.unet import UNetConfig

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "DiffusionConfig",
    "SampleConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
]


class ConfigError(ValueError):
    """A bad preset name, override key or value: the message is one line meant for the user."""


@dataclass(frozen=True)
class DiffusionConfig:
    """The noise process and what the network predicts (see :class:`ddpm.GaussianDiffusion`)."""

    schedule: Literal["linear", "cosine"] = "linear"
    timesteps: int = 1000
    beta_start: float = 1e-4  # linear schedule only (Ho et al. 2020)
    beta_end: float = 0.02
    cosine_s: float = 0.008  # cosine schedule only (Nichol & Dhariwal 2021)
    prediction: Prediction = "eps"
    variance: Variance = "fixed_small"
    loss: LossType = "mse"
    vlb_weight: float = 0.001
    weighting: Weighting = "none"
    min_snr_gamma: float = 5.0
    # How training draws t: "uniform" (Ho et al.) or "loss_aware" (Improved DDPM §3.3 importance sampling,
    # p_t ∝ √E[L_t²] with weights 1/(T p_t); see ddpm.resample).
    timestep_sampler: Literal["uniform", "loss_aware"] = "uniform"


@dataclass(frozen=True)
class DataConfig:
    """Which images to train on (see :func:`ddpm.data.load`)."""

    name: str = "mnist"
    root: str | None = None
    split: Literal["train", "test"] = "train"
    image_size: int | None = None  # None: the dataset's default (32 for MNIST, CIFAR-10)
    val_fraction: float = 0.0  # held-out share for the validation loss (0: none)
    flip: bool | None = None  # random horizontal flips; None: the dataset's default (CIFAR-10 only)
    limit: int | None = None  # use only the first N images (quick experiments)
    download: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, precision, logging and checkpointing."""

    batch_size: int = 128  # per optimizer step (summed over accumulation micro-batches and ranks)
    grad_accum: int = 1  # micro-batches per step; each holds batch_size / grad_accum images
    lr: float = 2e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    # Decay after warm-up over the run's budget: max_steps/epochs, or train.max_minutes of wall-clock time
    # (whichever ends first; a time budget restarts its decay when a run is resumed).
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    grad_clip: float | None = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = (
        True  # decay_k = min(ema_decay, (1 + k)/(10 + k)): short runs move off the initial weights
    )
    max_steps: int | None = None
    epochs: float | None = None  # alternative to max_steps
    max_minutes: float | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = (
        "auto"  # auto: bf16 on CPU with AMX/AVX-512 and on CUDA
    )
    label_dropout: float = 0.1  # classifier-free guidance: share of labels replaced by the null label
    seed: int = 0
    log_every: int = 50
    val_every: int | None = None  # steps between validation losses (None: at epoch ends only)
    val_batches: int = 8
    early_stopping_patience: int | None = None  # validations without improvement before stopping
    early_stopping_min_delta: float = 0.0
    checkpoint_every: int | None = 1000
    keep_checkpoints: int = 3
    sample_every: int | None = None  # steps between sample grids from fixed noise
    sample_n: int = 64
    # FID during training (ddpm.train.fid_monitor): every fid_every steps, fid_n images from the EMA network with
    # the run's sampler against fid_ref (None: the training data, fid_ref_n of its images; statistics cached)
    fid_every: int | None = None
    fid_n: int = 1000
    fid_ref: str | None = None
    fid_ref_n: int | None = 10_000
    max_nonfinite: int = 10  # consecutive non-finite losses tolerated before the run stops
    channels_last: bool = False
    compile: bool = False
    # torch intra-op threads: a number, "auto" (measured and re-checked while training, see ddpm.threads; pin a
    # number for bit-exact resume on the CPU) or None (torch's default)
    threads: int | Literal["auto"] | None = "auto"
    device: str = "auto"


@dataclass(frozen=True)
class SampleConfig:
    """Defaults for ``ddpm sample`` and for the grids drawn during training."""

    method: Literal["ddpm", "ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc", "heun"] = "unipc"
    steps: int | None = 20
    eta: float = 0.0
    # the timestep grid of the run's own sampler (None: the sampler's default; see ddpm.sampling.timestep_grid).
    # Distilled students set "trailing": the grid their steps were distilled on.
    spacing: (
        Literal["linspace", "leading", "trailing", "quadratic", "logsnr", "logsnr_soft", "karras"] | None
    ) = None
    guidance: float = 0.0
    clip_denoised: bool = True
    batch_size: int = 256


@dataclass(frozen=True)
class Config:
    """Everything a run needs; ``preset`` and ``source`` say where the numbers come from."""

    model: UNetConfig = field(default_factory=lambda: unet_config("tiny"))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    preset: str = ""
    source: str = ""


# --------------------------------------------------------------------------- (de)serialisation
def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready nested dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _section_from_dict(cls: type, data: Mapping[str, Any], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key {where + '.' if where else ''}{unknown[0]}; known: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        tp = hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[name] = _section_from_dict(tp, value, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or 'config'}: {e}") from None


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Rebuild a :class:`Config` from :func:`config_to_dict` output (e.g. a run's ``config.json``)."""
    return _section_from_dict(Config, data, "")


# --------------------------------------------------------------------------- overrides
def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (a Python value or the string from ``--set``) to type ``tp``, or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
    if origin is tuple:
        if isinstance(value, str):
            parts = [p for p in value.strip("()[] ").split(",") if p.strip()]
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        else:
            raise ConfigError(f"{key}: expected a comma-separated list, got {value!r}")
        item = args[0] if args else str
        return tuple(_coerce(p.strip() if isinstance(p, str) else p, item, key) for p in parts)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if not f.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if f != f or f in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return f
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: cannot set a value of type {tp}")  # pragma: no cover


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply ``section.key=value`` strings (e.g. ``train.lr=1e-4``, ``model.channel_mult=1,2,2``).

    Each value is checked against its field's type as it comes (a later override of the same key wins); each
    section is then rebuilt once with all of its changes, so fields that must agree can change together
    (``model.image_size=28 model.attention_resolutions=7``)."""
    changes: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        path, raw = item.split("=", 1)
        path = path.strip()
        _collect(cfg, path.split("."), raw.strip(), path, changes)
    return _rebuild(cfg, changes, "")


def _collect(obj: Any, keys: list[str], raw: str, path: str, changes: dict[str, Any]) -> None:
    """Type-check one override against ``obj`` and record it in the nested ``changes`` dict."""
    names = {f.name for f in fields(obj)}
    head = keys[0]
    if head not in names:
        where = path[: len(path) - len(".".join(keys))].rstrip(".")
        raise ConfigError(f"unknown config key {path!r}; {where or 'config'} has: {', '.join(sorted(names))}")
    current = getattr(obj, head)
    if len(keys) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown config key {path!r}: {head} is not a section")
        _collect(current, keys[1:], raw, path, changes.setdefault(head, {}))
        return
    if dataclasses.is_dataclass(current):
        raise ConfigError(
            f"{path} is a section; set one of its keys, e.g. {path}.{fields(current)[0].name}=..."
        )
    changes[head] = (_coerce(raw, typing.get_type_hints(type(obj))[head], path),)  # a 1-tuple marks a leaf


def _rebuild(obj: Any, changes: dict[str, Any], prefix: str) -> Any:
    kwargs = {
        k: v[0] if isinstance(v, tuple) else _rebuild(getattr(obj, k), v, f"{prefix}{k}.")
        for k, v in changes.items()
    }
    try:
        return replace(obj, **kwargs)
    except (TypeError, ValueError) as e:
        keys = ", ".join(f"{prefix}{k}" for k, v in changes.items() if isinstance(v, tuple))
        raise ConfigError(f"{keys or prefix.rstrip('.')}: {e}") from None


# --------------------------------------------------------------------------- old names of the recipes
_MOVED = {"PRESETS": "RECIPES", "get_preset": "get_recipe", "preset_names": "recipe_names"}


def __getattr__(name: str) -> Any:
    """``ddpm.config.PRESETS`` / ``get_preset`` / ``preset_names``: the training recipes moved to
    :mod:`ddpm.recipes` (``RECIPES`` / ``get_recipe`` / ``recipe_names``); the old names keep working."""
    if name in _MOVED:
        from . import recipes

        return getattr(recipes, _MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
