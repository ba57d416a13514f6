"""Load a trained run and generate images: what ``ddpm sample``, ``ddpm fid`` and ``ddpm eval`` share."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .builders import build_diffusion
from .checkpoint import CheckpointError, load_checkpoint, load_weights_into
from .config import Config
from .data import to_uint8
from .diffusion import GaussianDiffusion
from .nn.unet import UNet
from .runtime import autocast_context, resolve_device, resolve_precision
from .sampling import classifier_free_guidance, sample
from .threads import Threads, ThreadTuner, thread_scope

__all__ = ["LoadedModel", "PipelineError", "load_model", "model_fn", "generate", "save_images"]


class PipelineError(ValueError):
    """A request a loaded model cannot serve: no images asked for, labels for an unconditional model, an output
    name that is neither ``.npz``, ``.png`` nor a directory. The message names the argument, not a flag."""


@dataclass
class LoadedModel:
    """A network with its diffusion and config, ready to sample."""

    model: UNet
    diffusion: GaussianDiffusion
    config: Config
    step: int
    path: Path

    @property
    def image_shape(self) -> tuple[int, int, int]:
        s = self.config.data.image_size or self.config.model.image_size
        return (self.config.model.in_channels, s, s)


def load_model(path: str | Path, ema: bool = True, device: str = "auto") -> LoadedModel:
    """The (EMA by default) network of a run directory or checkpoint, in eval mode on ``device``."""
    ck = load_checkpoint(path, with_state=False)
    weights = ck.ema if ema and ck.ema is not None else ck.model
    try:
        model = UNet(ck.config.model)
    except ValueError as e:
        raise CheckpointError(f"{ck.path}: its config does not describe a valid network: {e}") from None
    load_weights_into(model, weights, f"checkpoint {ck.path}")
    model = model.to(resolve_device(device)).eval()
    return LoadedModel(model, build_diffusion(ck.config.diffusion), ck.config, ck.step, ck.path)


def model_fn(
    lm: LoadedModel, labels: Tensor | None = None, guidance: float = 0.0
) -> Callable[[Tensor, Tensor], Tensor]:
    """The run's network as the ``(x_t, t)`` callable samplers take: unconditional, the null label, or
    classifier-free guidance towards ``labels`` [N] with scale ``guidance``."""
    num_classes = lm.config.model.num_classes
    if num_classes is None:
        if labels is not None:
            raise PipelineError("labels were given but this model is not class-conditional")
        return lm.model
    if labels is None:  # a conditional model sampled without labels: the null label (unconditional)
        return lambda x, t: lm.model(x, t, torch.full((x.shape[0],), num_classes, device=x.device))
    c = lm.config.model.in_channels if lm.diffusion.variance == "learned_range" else None
    return classifier_free_guidance(lm.model, labels, guidance, num_classes, channels=c)


def generate(
    lm: LoadedModel,
    n: int,
    method: str | None = None,
    steps: int | None = -1,
    eta: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    labels: Tensor | None = None,
    guidance: float | None = None,
    precision: str | None = None,
    progress: bool = False,
    threads: Threads = "auto",
    on_eval: Callable[[Tensor, Tensor, Tensor], None] | None = None,
    **kw: Any,
) -> Tensor:
    """Draw ``n`` images as uint8 [n, C, H, W]; unset options fall back to the run's ``sample`` config.

    The run's ``sample.spacing`` applies when ``method`` is the run's own (unless ``spacing`` is given).
    Batch b uses a generator seeded by (seed, b), so results do not depend on anything but the arguments.
    ``labels`` [n] select classes for conditional models (guidance scale ``guidance``, Ho & Salimans 2022).
    ``precision=None`` samples in the run's own ``train.precision`` (``auto``: bf16 where the CPU or GPU has it).
    ``threads``: torch's CPU threads while sampling — a number, ``"auto"`` (each network evaluation is a unit of
    work for a :class:`~ddpm.threads.ThreadTuner`) or None (as set); bit-identical results need a number.
    ``on_eval(x_t, x̂₀, t)`` is called after every network evaluation with the batch's x_t and predicted x̂₀
    [m, C, H, W] and its original timesteps t [m] (to watch the chain denoise; it may raise to stop sampling).
    """
    sc = lm.config.sample
    method = method or sc.method
    steps = sc.steps if steps == -1 else steps
    eta = sc.eta if eta is None else eta
    guidance = sc.guidance if guidance is None else guidance
    batch_size = batch_size or sc.batch_size
    if "spacing" not in kw and sc.spacing is not None and method == sc.method:
        kw["spacing"] = sc.spacing  # the run's own sampler on its own grid (a distilled student's)
    if n < 1:
        raise PipelineError(f"n must be at least 1, got {n}")
    device = next(lm.model.parameters()).device
    if precision is None:
        precision = lm.config.train.precision
        if precision == "fp16" and device.type != "cuda":  # a GPU run sampled elsewhere
            precision = "auto"
    precision = resolve_precision(precision, device)
    out = []
    iterator = range(math.ceil(n / batch_size))
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"sampling ({method}, {steps or lm.diffusion.num_timesteps} steps)")
    with thread_scope(threads, device) as tuner:
        for b in iterator:
            m = min(batch_size, n - b * batch_size)
            g = torch.Generator(device).manual_seed(seed * 1_000_003 + b)
            y = labels[b * batch_size : b * batch_size + m].to(device) if labels is not None else None
            fn = _timed(model_fn(lm, y, guidance), tuner)
            if on_eval is not None:
                fn = _observed(fn, lm.diffusion, sc.clip_denoised, on_eval)
            with torch.inference_mode(), autocast_context(precision, device):
                x = sample(
                    fn,
                    lm.diffusion,
                    (m, *lm.image_shape),
                    method=method,
                    steps=steps,
                    eta=eta if method == "ddim" else 0.0,
                    generator=g,
                    clip_denoised=sc.clip_denoised,
                    **kw,
                )
            out.append(to_uint8(x.float().cpu()))
    return torch.cat(out)


def _timed(
    fn: Callable[[Tensor, Tensor], Tensor], tuner: ThreadTuner | None
) -> Callable[[Tensor, Tensor], Tensor]:
    """``fn`` with each call (one network evaluation of a batch) a unit of work for ``tuner``, per image."""
    if tuner is None:
        return fn
    return lambda x, t: tuner.run(lambda: fn(x, t), work=x.shape[0])


def _observed(
    fn: Callable[[Tensor, Tensor], Tensor],
    diffusion: GaussianDiffusion,
    clip_denoised: bool,
    on_eval: Callable[[Tensor, Tensor, Tensor], None],
) -> Callable[[Tensor, Tensor], Tensor]:
    """``fn`` reporting (x_t, x̂₀, t) to ``on_eval`` after each call; x̂₀ is read from the output the sampler
    gets anyway (the full diffusion at the original timestep t has the same ᾱ_t as any respaced one)."""

    def observed(x: Tensor, t: Tensor) -> Tensor:
        out = fn(x, t)
        x0, _ = diffusion.model_predictions(out, x, t, clip_denoised)
        on_eval(x, x0, t)
        return out

    return observed


def save_images(images: Tensor, out: str | Path, labels: Tensor | None = None) -> Path:
    """Write uint8 images [N, C, H, W] as ``.npz`` (key ``x``: [N, H, W, C], plus ``y`` if given), a grid ``.png``,
    or a directory of numbered PNGs."""
    out = Path(out)
    if out.suffix == ".npz":
        out.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"x": images.permute(0, 2, 3, 1).numpy().astype(np.uint8)}
        if labels is not None:
            arrays["y"] = labels.numpy()
        tmp = out.with_name(out.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stubs: **kwds as allow_pickle
        tmp.replace(out)
        return out
    if out.suffix == ".png":
        from .viz import save_grid

        return save_grid(images, out)
    if out.suffix:
        raise PipelineError(
            f"cannot write images to {out}: the name must end in .npz or .png, or name a directory"
        )
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        arr = img.permute(1, 2, 0).numpy()
        Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(out / f"{i:06d}.png")
    return out
