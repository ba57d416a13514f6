"""The figures of a run, drawn from its model and data: what ``ddpm viz`` makes, one function per figure.

:mod:`ddpm.viz` draws tensors it is given; this module decides what to draw — it samples the model (with the
denoising trajectory where the figure shows one), reads the dataset or the run's log — and hands the tensors to
:mod:`ddpm.viz`. Every function writes one file and returns its path. Sampling options follow
:func:`ddpm.pipeline.generate`: ``method=None`` and ``steps=-1`` mean the run's ``sample`` config.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import runlog, viz
from .pipeline import LoadedModel, generate, load_model, model_fn

__all__ = [
    "FigureError",
    "class_grid",
    "denoising",
    "forward",
    "losses",
    "real_vs_generated",
    "sample_grid",
    "schedules",
]

GIF_EVERY = 25  # a GIF frame every 25 timesteps of the trajectory


class FigureError(ValueError):
    """What a figure needs is missing (a training log, a class-conditional model)."""


def schedules(out: str | Path, timesteps: int = 1000) -> Path:
    """ᾱ_t of the linear (Ho et al. 2020) and cosine (Nichol & Dhariwal 2021) schedules over ``timesteps``."""
    from .schedule import NoiseSchedule

    curves = {"linear": NoiseSchedule.linear(timesteps), "cosine": NoiseSchedule.cosine(timesteps)}
    return viz.plot_alpha_bar(curves, out)


def losses(run: str | Path, out: str | Path) -> Path:
    """The training and validation loss curves of a run directory's ``metrics.jsonl``."""
    records = runlog.read(run)
    if not records:
        raise FigureError(f"no {runlog.FILENAME} in {run}")
    return viz.plot_losses(records, out)


def forward(
    out: str | Path,
    n: int = 8,
    *,
    run: str | Path | None = None,
    data: str | None = None,
    data_root: str | Path | None = None,
    schedule: str = "linear",
) -> Path:
    """The forward process q(x_t | x_0) (Ho et al. 2020, eq. 4) on the first ``n`` test images.

    With ``run``: the run's dataset (at its image size) and diffusion; ``data_root`` overrides where its files
    are. Without: dataset ``data`` (default ``digits``, which needs no files) under the ``schedule``
    (``linear`` or ``cosine``) of the default diffusion config.
    """
    from .builders import build_diffusion
    from .config import DiffusionConfig
    from .data import load, to_float

    if run is not None:
        cfg = load_model(run).config
        root = data_root or cfg.data.root
        images = load(cfg.data.name, root=root, split="test", image_size=cfg.data.image_size).images
        diffusion = build_diffusion(cfg.diffusion)
    else:
        images = load(data or "digits", root=data_root, split="test").images
        diffusion = build_diffusion(DiffusionConfig(schedule=schedule))  # type: ignore[arg-type]
    return viz.forward_strip(to_float(images[:n]), diffusion, out)


def denoising(
    lm: LoadedModel,
    n: int,
    out: str | Path,
    *,
    method: str | None = None,
    steps: int | None = -1,
    seed: int = 0,
    gif: bool = False,
) -> Path:
    """The reverse process of ``n`` samples: a strip of x̂ at ``viz.DENOISING_TIMESTEPS`` or, with ``gif``, an
    animation with a frame every ``GIF_EVERY`` timesteps.

    ``method`` defaults to ancestral ``ddpm`` over all T steps (the trajectory the figure is about); other
    methods default to the run's ``sample.steps``. The noise comes from a CPU generator seeded with ``seed``.
    """
    from .sampling import sample

    T = lm.diffusion.num_timesteps
    ts = tuple(range(T - 1, -1, -GIF_EVERY)) if gif else viz.DENOISING_TIMESTEPS
    ts = tuple(t for t in ts if t < T)
    method = method or "ddpm"
    if steps == -1:
        steps = None if method == "ddpm" else lm.config.sample.steps
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        x, frames = sample(
            model_fn(lm),
            lm.diffusion,
            (n, *lm.image_shape),
            method=method,
            steps=steps,
            generator=g,
            intermediates=ts,
        )
    return viz.denoising_gif(frames, out) if gif else viz.denoising_strip(frames, x, out, ts)


def sample_grid(
    lm: LoadedModel,
    n: int,
    out: str | Path,
    *,
    method: str | None = None,
    steps: int | None = -1,
    seed: int = 0,
) -> Path:
    """A grid of ``n`` samples (:func:`ddpm.pipeline.generate`)."""
    return viz.save_grid(generate(lm, n, method=method, steps=steps, seed=seed), out)


def real_vs_generated(
    lm: LoadedModel,
    n: int,
    out: str | Path,
    *,
    data_root: str | Path | None = None,
    method: str | None = None,
    steps: int | None = -1,
    seed: int = 0,
) -> Path:
    """``n`` test images of the run's dataset beside ``n`` samples; ``data_root`` overrides where its files are."""
    from .data import load

    d = lm.config.data
    real = load(d.name, root=data_root or d.root, split="test", image_size=d.image_size)
    fake = generate(lm, n, method=method, steps=steps, seed=seed)
    return viz.real_vs_generated(real.images[:n], fake, out, n=n)


def class_grid(
    lm: LoadedModel,
    n: int,
    out: str | Path,
    *,
    method: str | None = None,
    steps: int | None = -1,
    seed: int = 0,
    guidance: float | None = None,
) -> Path:
    """One row per class of a class-conditional model, ``n // K`` samples each (at least one), drawn with
    classifier-free guidance scale ``guidance`` (Ho & Salimans 2022; default the run's)."""
    k = lm.config.model.num_classes
    if k is None:
        raise FigureError("a class grid needs a class-conditional model (trained with model.num_classes)")
    labels = torch.arange(k).repeat_interleave(max(1, n // k))
    x = generate(lm, len(labels), method=method, steps=steps, seed=seed, labels=labels, guidance=guidance)
    return viz.class_grid(x, k, out)
