"""Samplers as small functions over a model callable ``model(x_t, t) -> output``.

Every sampler runs on a timestep grid (a subsequence of 0…T−1) through the respaced diffusion of Improved DDPM §4,
so "all T steps" is just the grid 0…T−1. ``t`` passed to the model is always the original timestep index.

- :func:`ddpm` — ancestral sampling, Ho et al. 2020 Algorithm 2 (respaced: Nichol & Dhariwal 2021 §4).
- :func:`ddim` — Song et al. 2021 eq. 12 with η (η = 0 deterministic; η = 1 is ancestral with σ² = β̃).
- :func:`dpmpp_2m` — DPM-Solver++(2M), Lu et al. 2022, Algorithm 2 (data-prediction multistep, discrete time).
- :func:`sample` — dispatch by name, the public entry point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .diffusion import GaussianDiffusion
from .schedule import NoiseSchedule

__all__ = [
    "sample",
    "ddpm",
    "ddim",
    "dpmpp_2m",
    "classifier_free_guidance",
    "timestep_grid",
    "SPACINGS",
    "METHODS",
]

ModelFn = Callable[[Tensor, Tensor], Tensor]
SPACINGS = ("linspace", "leading", "trailing", "quadratic", "logsnr")


def timestep_grid(
    num_timesteps: int,
    steps: int | None = None,
    spacing: str = "linspace",
    schedule: NoiseSchedule | None = None,
) -> list[int]:
    """Increasing timestep indices in [0, T−1] at which a sampler evaluates the model.

    - ``linspace``: round(linspace(0, T−1, steps)) (diffusers' "linspace"; includes both ends);
    - ``leading``: k·(T // steps) for k < steps (diffusers' "leading", DDIM's original code);
    - ``trailing``: round(T − k·T/steps) − 1 (diffusers' "trailing"; starts at T−1);
    - ``quadratic``: DDIM paper's quadratic grid, (linspace(0, √(0.8 T), steps))², rounded;
    - ``logsnr``: uniform in λ_t = log(ᾱ_t/(1−ᾱ_t)) between t = 0 and T−1 (DPM-Solver), needs ``schedule``.
    Rounding can repeat small timesteps; repeats are pushed up so the grid is strictly increasing.
    """
    T = int(num_timesteps)
    if steps is None:
        steps = T
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and T={T}, got {steps}")
    if spacing == "linspace":
        grid = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long()
    elif spacing == "leading":
        grid = torch.arange(steps, dtype=torch.long) * (T // steps)
    elif spacing == "trailing":
        grid = (torch.arange(T, 0, -T / steps, dtype=torch.float64).round().long() - 1).flip(0)
    elif spacing == "quadratic":
        grid = (torch.linspace(0, (0.8 * T) ** 0.5, steps, dtype=torch.float64) ** 2).round().long()
    elif spacing == "logsnr":
        if schedule is None:
            raise ValueError("spacing='logsnr' needs the noise schedule")
        lam = schedule.log_snr  # decreasing in t
        targets = torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64).flip(0)
        grid = torch.searchsorted(-lam, -targets).clamp(max=T - 1)
        grid[0] = 0
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    out: list[int] = []
    for v in grid.tolist():
        out.append(max(int(v), out[-1] + 1) if out else int(v))
    # Pushing repeats up cannot pass T−1 when steps ≤ T, but pull the tail back if it did.
    for k in range(len(out) - 1, -1, -1):
        out[k] = min(out[k], T - 1 - (len(out) - 1 - k))
    return out


def _init(
    shape: Sequence[int] | None, noise: Tensor | None, generator: torch.Generator | None, device: Any
) -> Tensor:
    """x_T: the given ``noise`` (never modified), or N(0, I) drawn from ``generator``."""
    if noise is not None:
        if shape is not None and tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)} but shape={tuple(shape)} was requested")
        return noise.float().clone()
    if shape is None:
        raise ValueError("give either shape or noise")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    return torch.randn(tuple(shape), generator=generator, device=device)


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class _Recorder:
    """Keeps x at the grid points nearest to the requested original timesteps (for denoising strips)."""

    def __init__(self, requested: Sequence[int] | None, grid: Sequence[int]) -> None:
        self.frames: dict[int, Tensor] = {}
        self.want: dict[int, list[int]] = {}
        for r in requested or ():
            i = min(range(len(grid)), key=lambda k: abs(grid[k] - r))
            self.want.setdefault(i, []).append(int(r))

    def __call__(self, i: int, x: Tensor) -> None:
        for r in self.want.get(i, ()):
            self.frames[r] = x.detach().clone()


def _t(i_orig: Tensor, x: Tensor) -> Tensor:
    return i_orig.to(x.device).expand(x.shape[0])


def ddpm(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    shape: Sequence[int] | None = None,
    steps: int | None = None,
    *,
    spacing: str = "linspace",
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    device: Any = None,
    intermediates: Sequence[int] | None = None,
    progress: bool = False,
) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    """Ancestral sampling (Ho et al. Algorithm 2): x_{t−1} = μ_θ(x_t, t) + σ_t z, no noise at the last step.

    With ``steps`` < T the chain runs on a respaced grid (Improved DDPM §4: β recomputed from ᾱ on the grid).
    Returns x₀ [N, C, H, W] (float), or (x₀, {t: x_t}) when ``intermediates`` lists timesteps to record.
    """
    grid = timestep_grid(diffusion.num_timesteps, steps, spacing)
    d = diffusion.respaced(grid)
    x = _init(shape, noise, generator, device)
    rec = _Recorder(intermediates, grid)
    for i in _progress(reversed(range(len(grid))), len(grid), progress):
        rec(i, x)
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        out = d.p_mean_variance(model(x, _t(d.timestep_map[i], x)), x, t, clip_denoised)
        x = out.mean
        if i > 0:
            x = x + torch.exp(0.5 * out.log_variance) * _randn_like(x, generator)
    return (x, rec.frames) if intermediates is not None else x


def ddim(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    shape: Sequence[int] | None = None,
    steps: int | None = 50,
    *,
    eta: float = 0.0,
    spacing: str = "linspace",
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    device: Any = None,
    intermediates: Sequence[int] | None = None,
    progress: bool = False,
) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    """DDIM (Song et al. 2021, eq. 12) on a grid τ:

    x_{τ_{i−1}} = √ᾱ_{τ_{i−1}} x̂₀ + √(1 − ᾱ_{τ_{i−1}} − σ²) ε̂ + σ z,
    σ = η √((1 − ᾱ_{τ_{i−1}})/(1 − ᾱ_{τ_i})) √(1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}}) (eq. 16), with ᾱ = 1 after the last step,
    so the final output is x̂₀. η = 1 gives σ² = β̃ of the respaced chain: the ancestral sampler on that grid.
    """
    grid = timestep_grid(diffusion.num_timesteps, steps, spacing)
    d = diffusion.respaced(grid)
    ac = d.schedule.alphas_cumprod
    ac_prev = d.schedule.alphas_cumprod_prev
    x = _init(shape, noise, generator, device)
    rec = _Recorder(intermediates, grid)
    for i in _progress(reversed(range(len(grid))), len(grid), progress):
        rec(i, x)
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        x0, eps = d.model_predictions(model(x, _t(d.timestep_map[i], x)), x, t, clip_denoised)
        a, a_prev = float(ac[i]), float(ac_prev[i])
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        x = a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * _randn_like(x, generator)
    return (x, rec.frames) if intermediates is not None else x


def dpmpp_2m(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    shape: Sequence[int] | None = None,
    steps: int | None = 20,
    *,
    spacing: str = "logsnr",
    final: str = "t0",
    lower_order_final: bool = True,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    device: Any = None,
    intermediates: Sequence[int] | None = None,
    progress: bool = False,
) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in discrete time, one model evaluation per step.

    With α_t = √ᾱ_t, σ_t = √(1−ᾱ_t), λ_t = log(α_t/σ_t) and h_i = λ_{t_i} − λ_{t_{i−1}}:
    x_{t_i} = (σ_{t_i}/σ_{t_{i−1}}) x − α_{t_i}(e^{−h_i} − 1) D_i, where D_i = x̂₀ for the first step and
    D_i = (1 + 1/(2r_i)) x̂₀(t_{i−1}) − 1/(2r_i) x̂₀(t_{i−2}) after it, r_i = h_{i−1}/h_i.

    ``final`` says where the last step lands: ``"t0"`` — the grid has ``steps`` + 1 points, the model is evaluated
    at all but the lowest, and the solver stops at that lowest timestep (0 for ``linspace``: ᾱ_0 = 1 − β_1, the
    data up to the forward process's first, sub-quantization noise), returning x there; ``"x0"`` — the model is
    evaluated at all ``steps`` grid points and the last step goes to σ = 0, which is first order and returns x̂₀
    (as DDIM does). The default grid is uniform in log-SNR (Lu et al. recommend it; with the linear schedule a
    time-uniform grid leaves very unequal steps in λ that the two-step extrapolation handles badly).
    ``lower_order_final`` takes the last step at first order when ``steps`` < 15 (DPM-Solver's
    remedy for the large last step). With first-order steps only this is DDIM (η = 0) on the same grid.
    """
    if final not in ("t0", "x0"):
        raise ValueError(f"final must be 't0' or 'x0', got {final!r}")
    n = diffusion.num_timesteps if steps is None else steps
    points = timestep_grid(
        diffusion.num_timesteps,
        min(n + 1, diffusion.num_timesteps) if final == "t0" else n,
        spacing,
        diffusion.schedule,
    )
    d = diffusion.respaced(points)
    ac = d.schedule.alphas_cumprod.tolist()
    # Each step evaluates the model at index i and moves to index j (j = −1: σ = 0).
    evals = list(reversed(range(1 if final == "t0" and len(points) > 1 else 0, len(points))))
    x = _init(shape, noise, generator, device)
    rec = _Recorder(intermediates, points)
    x0_prev: Tensor | None = None
    h_prev = 0.0
    for k, i in enumerate(_progress(evals, len(evals), progress)):
        rec(i, x)
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        x0, _ = d.model_predictions(model(x, _t(d.timestep_map[i], x)), x, t, clip_denoised)
        j = i - 1
        if j < 0:
            x = x0  # to σ = 0 (λ = ∞): D = x̂₀
            break
        lam_s = 0.5 * (math.log(ac[i]) - math.log1p(-ac[i]))
        lam_t = 0.5 * (math.log(ac[j]) - math.log1p(-ac[j]))
        h = lam_t - lam_s
        last = k == len(evals) - 1
        if x0_prev is None or (last and lower_order_final and len(evals) < 15):
            D = x0
        else:
            r = h_prev / h
            D = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        x = math.sqrt((1 - ac[j]) / (1 - ac[i])) * x - math.sqrt(ac[j]) * math.expm1(-h) * D
        x0_prev, h_prev = x0, h
    return (x, rec.frames) if intermediates is not None else x


def _progress(it: Any, total: int, enabled: bool) -> Any:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc="sampling", leave=False)


METHODS: dict[str, Callable[..., Any]] = {"ddpm": ddpm, "ddim": ddim, "dpmpp_2m": dpmpp_2m}


def sample(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    shape: Sequence[int] | None,
    method: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    **kw: Any,
) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    """Draw samples with the named sampler (``"ddpm"``, ``"ddim"`` or ``"dpmpp_2m"``).

    ``model(x_t, t)`` returns the network output for x_t [N, C, H, W] and original timesteps t [N] (long).
    ``steps=None`` uses all T steps; ``noise`` is x_T (drawn from ``generator`` when None, never modified);
    ``clip_denoised`` clips x̂₀ to [−1, 1]. Extra keywords (``spacing``, ``device``, ``intermediates``,
    ``progress``) go to the sampler. Runs under ``torch.no_grad``; returns the final x as a float tensor.
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "ddim":
        kw["eta"] = eta
    elif eta:
        raise ValueError(f"eta applies to method='ddim' only, not {method!r}")
    with torch.no_grad():
        return METHODS[method](
            model,
            diffusion,
            shape,
            steps,
            generator=generator,
            noise=noise,
            clip_denoised=clip_denoised,
            **kw,
        )


def classifier_free_guidance(
    model: Callable[..., Tensor], y: Tensor, scale: float, null_label: int, channels: int | None = None
) -> ModelFn:
    """Ho & Salimans 2022: ε̃ = (1 + w)·ε(x, y) − w·ε(x, ∅), as a ``model(x_t, t)`` callable for any sampler.

    ``y`` [N] are the labels and ``null_label`` the "no class" index the model was trained with (label dropout).
    ``w = 0`` is plain conditional sampling and ``w = −1`` the unconditional model. With ``channels`` set (learned
    variances: the output has 2·C channels), only the first C channels are guided; the variance channels come from
    the conditional branch. Both branches run as one batch of 2N.
    """
    if scale == 0:
        return lambda x, t: model(x, t, y)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        n = x.shape[0]
        labels = torch.cat([y.to(x.device), torch.full_like(y, null_label).to(x.device)])
        out = model(torch.cat([x, x]), torch.cat([t, t]), labels)
        cond, uncond = out[:n], out[n:]
        c = channels if channels is not None else out.shape[1]
        mean = (1 + scale) * cond[:, :c] - scale * uncond[:, :c]
        return torch.cat([mean, cond[:, c:]], dim=1) if c < out.shape[1] else mean

    return guided
