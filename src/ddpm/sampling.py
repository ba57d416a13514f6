"""Samplers as small functions over a model callable ``model(x_t, t) -> output``.

Every sampler runs on a timestep grid (a subsequence of 0…T−1) through the respaced diffusion of Improved DDPM §4,
so "all T steps" is just the grid 0…T−1. ``t`` passed to the model is always the original timestep index, and the
network output is read through :meth:`GaussianDiffusion.model_predictions`, so ε-, x₀- and v-prediction, learned
variances (2·C channels) and classifier-free guidance (a wrapped model) work with every sampler.

- :func:`ddpm` — ancestral sampling, Ho et al. 2020 Algorithm 2 (respaced: Nichol & Dhariwal 2021 §4).
- :func:`ddim` — Song et al. 2021 eq. 12 with η (η = 0 deterministic; η = 1 is ancestral with σ² = β̃).
- :func:`dpmpp_2m`, :func:`dpmpp_3m` — DPM-Solver++ multistep of order 2 and 3 (Lu et al. 2022), discrete time.
- :func:`unipc` — the same predictor with the UniPC corrector (Zhao et al. 2023): one order more, no extra
  evaluation. The most accurate per evaluation on ``benchmarks/sampler_accuracy.py``: the recommended sampler,
  at 10–20 steps.
- :func:`dpmpp_2m_sde` — the stochastic DPM-Solver++(2M) (Lu et al. 2022, App. B "SDE-DPM-Solver++(2M)"): the
  ancestral chain's noise at second order. For imperfect (short-trained) networks stochastic samplers correct
  their errors where the ODE solvers carry them to the end (the README's MNIST budget figures).
- :func:`heun` — EDM's second-order Heun sampler (Karras et al. 2022, Algorithm 1, no churn), two evaluations a step.
- :func:`sample` — dispatch by name, the public entry point.

Notation (Lu et al. 2022): α_t = √ᾱ_t, σ_t = √(1−ᾱ_t), λ_t = log(α_t/σ_t) (half the log-SNR), and EDM's
noise level σ̃_t = σ_t/α_t = e^{−λ_t} acting on y = x/α (x_t = α_t(x₀ + σ̃_t ε)).

The defaults of the multistep solvers (the ``logsnr_soft`` grid, ``final="t0"``) are the most accurate choices on
``benchmarks/sampler_accuracy.py`` (distance to the exact ODE solution of a Gaussian mixture; the figures are in the
README). Stopping at t = 0 leaves x at ᾱ_0 = 1 − β_1, short of where the exact flow ends at σ = 0: that gap is the
floor every solver reaches at large step counts, and ending with x̂₀ there (``final="x0"``) gets no closer.

Longer than ~400 lines on purpose: every sampler shares one signature, one grid helper and one exponential-
integrator core (DPM-Solver++ and UniPC are its variants), and reads best beside the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, overload

import torch
from torch import Tensor

from .diffusion import GaussianDiffusion
from .schedule import NoiseSchedule

__all__ = [
    "sample",
    "ddpm",
    "ddim",
    "dpmpp",
    "dpmpp_2m",
    "dpmpp_3m",
    "dpmpp_2m_sde",
    "unipc",
    "heun",
    "classifier_free_guidance",
    "timestep_grid",
    "SPACINGS",
    "METHODS",
    "LOGSNR_KNEE",
]

ModelFn = Callable[[Tensor, Tensor], Tensor]
SPACINGS = ("linspace", "leading", "trailing", "quadratic", "logsnr", "logsnr_soft", "karras")
LOGSNR_KNEE = -1.5
"""λ_c of the ``logsnr_soft`` grid: points are uniform in v = log(e^λ + e^{λ_c}), i.e. in log-SNR where λ ≫ λ_c and
ever sparser above the noise level σ̃_c = e^{−λ_c} ≈ 4.5 (nine times σ_data ≈ 0.5 of images in [−1, 1]), where
x̂₀ has barely left E[x₀] and the exponential integrator is nearly exact. Tuned on the Gaussian-mixture benchmark
(λ_c from −1 to −2 all do well; plain ``logsnr`` spends about 40 % of a 10-step grid above σ̃_c)."""
KARRAS_RHO = 7.0


def timestep_grid(
    num_timesteps: int,
    steps: int | None = None,
    spacing: str = "linspace",
    schedule: NoiseSchedule | None = None,
) -> list[int]:
    """Increasing timestep indices in [0, T−1] at which a sampler evaluates the model.

    - ``linspace``: round(linspace(0, T−1, steps)) — time-uniform (diffusers' "linspace"; includes both ends);
    - ``leading``: k·(T // steps) for k < steps (diffusers' "leading", DDIM's original code);
    - ``trailing``: round(T − k·T/steps) − 1 (diffusers' "trailing"; starts at T−1);
    - ``quadratic``: DDIM paper's quadratic grid, (linspace(0, √(0.8 T), steps))², rounded (it stops near 0.8 T);
    - ``logsnr``: uniform in λ_t between t = 0 and T−1 (DPM-Solver), needs ``schedule``;
    - ``logsnr_soft``: uniform in v = log(e^λ + e^{λ_c}), λ_c = :data:`LOGSNR_KNEE` — log-SNR-uniform at low
      noise, few points at high noise; includes 0 and T−1 (the default of the multistep solvers);
    - ``karras``: EDM's σ̃_i = (σ̃_max^{1/ρ} + i/(n−1)(σ̃_min^{1/ρ} − σ̃_max^{1/ρ}))^ρ, ρ = 7 (Karras et al. 2022
      eq. 5), each σ̃_i taken to the timestep nearest in log σ̃ (the model exists at integer timesteps only).
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
        # T − k·(T/steps) for k < steps, as diffusers computes it, but from integer k: a float arange with step
        # −T/steps can overshoot by one point (n + 1 timesteps, the first −1) for some n.
        k = torch.arange(steps, dtype=torch.float64)
        grid = ((T - k * (T / steps)).round().long() - 1).flip(0)
    elif spacing == "quadratic":
        grid = (torch.linspace(0, (0.8 * T) ** 0.5, steps, dtype=torch.float64) ** 2).round().long()
    elif spacing in ("logsnr", "logsnr_soft", "karras"):
        if schedule is None:
            raise ValueError(f"spacing={spacing!r} needs the noise schedule")
        lam = 0.5 * schedule.log_snr  # decreasing in t
        if spacing == "karras":
            rho = KARRAS_RHO
            lo, hi = math.exp(-float(lam[0])) ** (1 / rho), math.exp(-float(lam[-1])) ** (1 / rho)
            sig = (lo + torch.linspace(0, 1, steps, dtype=torch.float64) * (hi - lo)) ** rho
            grid = _nearest(lam, -sig.log())
        else:
            if spacing == "logsnr_soft":
                lam = torch.logaddexp(lam, torch.tensor(LOGSNR_KNEE, dtype=torch.float64))
            grid = _nearest(lam, torch.linspace(float(lam[-1]), float(lam[0]), steps, dtype=torch.float64))
            grid[0], grid[-1] = T - 1, 0
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    grid = grid.sort().values
    # Push repeats up: out_k = max(v_k, out_{k−1} + 1), i.e. out_k − k = cummax(v_k − k); then pull the tail back
    # below T − 1 (out_k ≤ T − steps + k). Both keep the grid strictly increasing.
    k = torch.arange(steps, dtype=torch.long)
    out = torch.cummax(grid - k, dim=0).values + k
    return torch.minimum(out, T - steps + k).tolist()


def _nearest(table: Tensor, values: Tensor) -> Tensor:
    """Index of the entry of the decreasing ``table`` nearest to each of ``values`` (ties: the lower index)."""
    asc = table.flip(0)  # increasing
    hi = torch.searchsorted(asc, values).clamp(1, len(asc) - 1)
    lo = hi - 1
    # asc[hi] is the nearer one only when strictly nearer: as an index of ``table`` it is the lower one, so ties
    # (equal distances) go to it too.
    pick = torch.where((asc[hi] - values).abs() <= (values - asc[lo]).abs(), hi, lo)
    return len(asc) - 1 - pick


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


class _Chain:
    """What every sampler shares: the respaced diffusion on ``points``, x_T, the recorder, and the model read as
    (x̂₀, ε̂) at grid index i. ``abar[i]``, ``lam[i]`` (λ) and ``sig[i]`` (σ̃ = e^{−λ}) are Python floats."""

    def __init__(
        self,
        model: ModelFn,
        diffusion: GaussianDiffusion,
        points: Sequence[int],
        shape: Sequence[int] | None,
        noise: Tensor | None,
        generator: torch.Generator | None,
        device: Any,
        clip_denoised: bool,
        intermediates: Sequence[int] | None,
    ) -> None:
        self.model, self.clip, self.intermediates = model, clip_denoised, intermediates
        self.d = diffusion.respaced(points)
        self.abar = self.d.schedule.alphas_cumprod.tolist()
        self.lam = [0.5 * (math.log(a) - math.log1p(-a)) for a in self.abar]
        self.sig = [math.exp(-v) for v in self.lam]
        self.x = _init(shape, noise, generator, device)
        self.record = _Recorder(intermediates, points)

    def predict(self, x: Tensor, i: int) -> tuple[Tensor, Tensor]:
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        t_orig = self.d.timestep_map[i].to(x.device).expand(x.shape[0])
        return self.d.model_predictions(self.model(x, t_orig), x, t, self.clip)

    def ancestral(self, x: Tensor, i: int, generator: torch.Generator | None) -> Tensor:
        """One step of Ho et al. Algorithm 2 from grid index i: x_{i−1} = μ_θ(x_i, i) + σ_i z (no noise at i = 0),
        Σ_θ the diffusion's (fixed or learned)."""
        t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
        out = self.d.p_mean_variance(
            self.model(x, self.d.timestep_map[i].to(x.device).expand(x.shape[0])), x, t, self.clip
        )
        if i == 0:
            return out.mean
        return out.mean + torch.exp(0.5 * out.log_variance) * _randn_like(x, generator)

    def result(self, x: Tensor) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
        return (x, self.record.frames) if self.intermediates is not None else x


def _points(diffusion: GaussianDiffusion, steps: int | None, spacing: str, final: str) -> list[int]:
    """The grid of an ODE sampler taking ``steps`` steps: it ends at t = 0 (``final="t0"``, one point more than
    evaluations) or evaluates at every point and takes its last step to σ = 0 (``final="x0"``)."""
    if final not in ("t0", "x0"):
        raise ValueError(f"final must be 't0' or 'x0', got {final!r}")
    T = diffusion.num_timesteps
    n = T if steps is None else steps
    return timestep_grid(T, min(n + 1, T) if final == "t0" else n, spacing, diffusion.schedule)


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

    With ``steps`` < T the chain runs on a respaced grid (Improved DDPM §4: β recomputed from ᾱ on the grid);
    Σ_θ is the diffusion's (fixed or learned). Returns x₀ [N, C, H, W] (float), or (x₀, {t: x_t}) when
    ``intermediates`` lists timesteps to record.
    """
    grid = timestep_grid(diffusion.num_timesteps, steps, spacing, diffusion.schedule)
    c = _Chain(model, diffusion, grid, shape, noise, generator, device, clip_denoised, intermediates)
    x = c.x
    for i in _progress(reversed(range(len(grid))), len(grid), progress):
        c.record(i, x)
        x = c.ancestral(x, i, generator)
    return c.result(x)


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
    With η = 0 this is Euler's method on dy/dσ̃ = ε̂ (Karras et al. 2022 §3) and first-order DPM-Solver++.
    """
    grid = timestep_grid(diffusion.num_timesteps, steps, spacing, diffusion.schedule)
    c = _Chain(model, diffusion, grid, shape, noise, generator, device, clip_denoised, intermediates)
    x = c.x
    for i in _progress(reversed(range(len(grid))), len(grid), progress):
        c.record(i, x)
        x0, eps = c.predict(x, i)
        a, a_prev = c.abar[i], (c.abar[i - 1] if i > 0 else 1.0)
        sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        x = a_prev**0.5 * x0 + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * _randn_like(x, generator)
    return c.result(x)


# --------------------------------------------------------------------------- exponential-integrator multistep
def _phi_moments(h: float, m: int) -> list[float]:
    """I_k = ∫₀ʰ e^{u−h} u^k du for k < m: I_0 = 1 − e^{−h}, I_k = h^k − k·I_{k−1} (integration by parts)."""
    out = [-math.expm1(-h)]
    for k in range(1, m):
        out.append(h**k - k * out[-1])
    return out


def _ei_step(c: _Chain, x: Tensor, i: int, j: int, nodes: Sequence[float], D: Sequence[Tensor]) -> Tensor:
    """One exponential-integrator step of the data-prediction ODE from grid index i to j (DPM-Solver++, Lu et al.
    2022, §3: the linear part solved exactly by variation of constants in λ):

    x_j = (σ_j/σ_i) x_i + α_j ∫₀ʰ e^{u−h} x̂₀(λ_i + u) du,  h = λ_j − λ_i,

    with x̂₀ replaced by the polynomial in u through (nodes[k], D[k]) — nodes are λ − λ_i of the model outputs D.
    The integral is Σ_k w_k D_k where V^T w = (I_0, I_1, …) and V_{kℓ} = nodes_k^ℓ (exact for that polynomial).
    One node gives DDIM; two previous outputs DPM-Solver++(2M) (diffusers' solver_type="heun" form); three 3M.
    """
    h = c.lam[j] - c.lam[i]
    m = len(nodes)
    V = torch.tensor([[u**k for k in range(m)] for u in nodes], dtype=torch.float64)
    w = torch.linalg.solve(V.T, torch.tensor(_phi_moments(h, m), dtype=torch.float64)).tolist()
    a_j = math.sqrt(c.abar[j])
    out = math.sqrt((1 - c.abar[j]) / (1 - c.abar[i])) * x
    for wk, Dk in zip(w, D, strict=True):
        out = out + (a_j * wk) * Dk
    return out


def dpmpp(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    shape: Sequence[int] | None = None,
    steps: int | None = 20,
    *,
    order: int = 2,
    corrector: bool = False,
    spacing: str = "logsnr_soft",
    final: str = "t0",
    lower_order_final: bool = True,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    device: Any = None,
    intermediates: Sequence[int] | None = None,
    progress: bool = False,
) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    """Multistep DPM-Solver++ of ``order`` 1–3 (Lu et al. 2022, Algorithm 2 and its 3M form), one model
    evaluation per step, optionally with the UniPC corrector (Zhao et al. 2023, UniC).

    Step i → j integrates the polynomial through the last ``order`` x̂₀ (in λ) exactly (:func:`_ei_step`); the
    first steps use what history there is. With ``corrector`` the model output at the new point, which the next
    step needs anyway, is added as a node and the step is redone from x_i at one order more — x_j is replaced, the
    output is not re-evaluated (UniPC's "no extra cost"; the last step has no correction). ``final``:

    - ``"t0"`` (default): the grid has ``steps`` + 1 points; the model is evaluated at all but the lowest, t = 0,
      where the solver stops and returns x_0 — every step has finite h, so every step keeps its order.
      x_0 still carries the forward process's first noise level σ̃_0 = √(β_1/(1−β_1)) (0.01 for the linear
      schedule): far below the sampler error at small step counts, the floor under it at large ones (see the benchmark).
    - ``"x0"``: evaluate at all ``steps`` grid points and take the last step to σ = 0 (h = ∞): that step is first
      order whatever ``order`` is and returns x̂₀ at the lowest grid point (as DDIM and diffusers' default do).

    ``lower_order_final`` takes the last step at first order when there are fewer than 15 steps (DPM-Solver's
    remedy for a large last step on time-uniform grids). With ``order=1`` this is DDIM (η = 0) on the same grid.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    points = _points(diffusion, steps, spacing, final)
    c = _Chain(model, diffusion, points, shape, noise, generator, device, clip_denoised, intermediates)
    evals = list(reversed(range(1 if final == "t0" and len(points) > 1 else 0, len(points))))
    x = c.x
    hist: list[tuple[int, Tensor]] = []  # (grid index, x̂₀), newest first
    start: tuple[Tensor, int] | None = None  # (x_i, i) of the step just taken, for the corrector
    for k, i in enumerate(_progress(evals, len(evals), progress)):
        x0, _ = c.predict(x, i)
        if corrector and start is not None:
            xs, s = start
            used = hist[:order]
            x = _ei_step(c, xs, s, i, [c.lam[i] - c.lam[s]] + [c.lam[n] - c.lam[s] for n, _ in used],
                         [x0] + [D for _, D in used])  # fmt: skip
        c.record(i, x)
        hist = [(i, x0), *hist[: order - 1]]
        if i == 0:  # final="x0": the step to σ = 0 (λ = ∞) lands on D = x̂₀
            return c.result(x0)
        last = k == len(evals) - 1
        used = hist[:1] if last and lower_order_final and len(evals) < 15 else hist
        start = (x, i)
        x = _ei_step(c, x, i, i - 1, [c.lam[n] - c.lam[i] for n, _ in used], [D for _, D in used])
    return c.result(x)


def dpmpp_2m(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    shape: Sequence[int] | None = None,
    steps: int | None = 20,
    **kw: Any,
) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    """DPM-Solver++(2M): :func:`dpmpp` with ``order=2``."""
    return dpmpp(model, diffusion, shape, steps, order=2, **kw)


def dpmpp_3m(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    shape: Sequence[int] | None = None,
    steps: int | None = 20,
    **kw: Any,
) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    """DPM-Solver++(3M): :func:`dpmpp` with ``order=3``."""
    return dpmpp(model, diffusion, shape, steps, order=3, **kw)


def dpmpp_2m_sde(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    shape: Sequence[int] | None = None,
    steps: int | None = 25,
    *,
    order: int = 2,
    spacing: str = "logsnr_soft",
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    device: Any = None,
    intermediates: Sequence[int] | None = None,
    progress: bool = False,
) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, App. B; diffusers' ``sde-dpmsolver++``, "midpoint" form) on a grid of
    ``steps`` points, each evaluated once; the step to σ = 0 after the lowest returns x̂₀ (as DDIM does):

    x_j = (σ_j/σ_i) e^{−h} x_i + α_j (1 − e^{−2h}) D + σ_j √(1 − e^{−2h}) z,   h = λ_j − λ_i,

    with D = x̂₀_i (``order=1``: exactly DDIM with η = 1, i.e. the ancestral sampler on the grid) or, at order 2,
    D = x̂₀_i + (x̂₀_i − x̂₀_k)/(2 r), r = (λ_i − λ_k)/h, from the previous evaluation k (the first step has none).
    Keep the λ-based default grid: on time-uniform grids h/(λ_i − λ_k) grows large near t = 0 and the
    extrapolated D inflates the variance of the samples (checked on Gaussian data, whose exact moments are known).
    """
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    points = _points(diffusion, steps, spacing, "x0")
    c = _Chain(model, diffusion, points, shape, noise, generator, device, clip_denoised, intermediates)
    x, prev = c.x, None
    for i in _progress(reversed(range(len(points))), len(points), progress):
        c.record(i, x)
        x0, _ = c.predict(x, i)
        if i == 0:  # the step to σ = 0 (λ = ∞) lands on x̂₀
            break
        j = i - 1
        h = c.lam[j] - c.lam[i]
        D = x0
        if order == 2 and prev is not None:
            k, x0_k = prev
            D = x0 + (x0 - x0_k) * (h / (2 * (c.lam[i] - c.lam[k])))
        s_i, s_j, one_minus = math.sqrt(1 - c.abar[i]), math.sqrt(1 - c.abar[j]), -math.expm1(-2 * h)
        x = (s_j / s_i * math.exp(-h)) * x + (math.sqrt(c.abar[j]) * one_minus) * D
        x = x + (s_j * math.sqrt(one_minus)) * _randn_like(x, generator)
        prev = (i, x0)
    return c.result(x0)  # the grid is never empty: the loop always ends at i = 0


def unipc(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    shape: Sequence[int] | None = None,
    steps: int | None = 20,
    *,
    order: int = 3,
    **kw: Any,
) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    """UniPC (Zhao et al. 2023) in data prediction: the DPM-Solver++ predictor of ``order`` plus the UniC corrector
    of one order more, with coefficients that integrate the interpolating polynomial exactly (cf. the paper's
    varying-coefficient variant; diffusers' UniPCMultistepScheduler uses the B(h) approximations instead).
    :func:`dpmpp` with ``corrector=True``. The most accurate sampler per evaluation here (against diffusers'
    DPMSolverMultistepScheduler and DDIM on ``benchmarks/sampler_accuracy.py``; the figures are in the README).
    Keep the default grid: on time-uniform ones the λ steps near t = 0 are very unequal and the high-order steps
    lose stability there."""
    return dpmpp(model, diffusion, shape, steps, order=order, corrector=True, **kw)


def heun(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    shape: Sequence[int] | None = None,
    steps: int | None = 10,
    *,
    spacing: str = "karras",
    final: str = "t0",
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    device: Any = None,
    intermediates: Sequence[int] | None = None,
    progress: bool = False,
) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    """EDM's Heun sampler (Karras et al. 2022, Algorithm 1 without churn) on dy/dσ̃ = ε̂(y, σ̃), y = x/α:

    ỹ = y_i + (σ̃_j − σ̃_i) ε̂_i (Euler = DDIM),  y_j = y_i + (σ̃_j − σ̃_i)(ε̂_i + ε̂(ỹ, σ̃_j))/2 (trapezoid).

    Two evaluations per step: 2·``steps`` in all with ``final="t0"`` (the last step lands on t = 0 and is corrected
    too), 2·``steps`` − 1 with ``final="x0"`` (the last step goes to σ̃ = 0 by Euler: x̂₀, as in EDM). Kept for
    comparison: on DDPM schedules (σ̃ up to 157 for the linear one) it needs many evaluations to beat DDIM and is
    far behind the multistep solvers at any budget (``benchmarks/sampler_accuracy.py``).
    """
    points = _points(diffusion, steps, spacing, final)
    c = _Chain(model, diffusion, points, shape, noise, generator, device, clip_denoised, intermediates)
    x = c.x
    first = 1 if final == "t0" and len(points) > 1 else 0
    for i in _progress(reversed(range(first, len(points))), len(points) - first, progress):
        c.record(i, x)
        x0, e = c.predict(x, i)
        if i == 0:
            return c.result(x0)
        j = i - 1
        y, ds = x / math.sqrt(c.abar[i]), c.sig[j] - c.sig[i]
        y_euler = y + ds * e
        _, e2 = c.predict(y_euler * math.sqrt(c.abar[j]), j)
        x = (y + ds * 0.5 * (e + e2)) * math.sqrt(c.abar[j])
    return c.result(x)


def _progress(it: Any, total: int, enabled: bool) -> Any:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc="sampling", leave=False)


METHODS: dict[str, Callable[..., Any]] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_3m": dpmpp_3m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "unipc": unipc,
    "heun": heun,
}


@overload
def sample(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    shape: Sequence[int] | None,
    method: str = ...,
    steps: int | None = ...,
    eta: float = ...,
    generator: torch.Generator | None = ...,
    noise: Tensor | None = ...,
    clip_denoised: bool = ...,
    *,
    intermediates: None = ...,
    **kw: Any,
) -> Tensor: ...
@overload
def sample(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    shape: Sequence[int] | None,
    method: str = ...,
    steps: int | None = ...,
    eta: float = ...,
    generator: torch.Generator | None = ...,
    noise: Tensor | None = ...,
    clip_denoised: bool = ...,
    *,
    intermediates: Sequence[int],
    **kw: Any,
) -> tuple[Tensor, dict[int, Tensor]]: ...
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
    *,
    intermediates: Sequence[int] | None = None,
    **kw: Any,
) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
    """Draw samples with the named sampler (a key of :data:`METHODS`).

    ``model(x_t, t)`` returns the network output for x_t [N, C, H, W] and original timesteps t [N] (long).
    ``steps=None`` uses all T steps; ``noise`` is x_T (drawn from ``generator`` when None, never modified);
    ``clip_denoised`` clips x̂₀ to [−1, 1]. Extra keywords (``spacing``, ``final``, ``order``, ``device``,
    ``progress`` …) go to the sampler. Runs under ``torch.no_grad``; returns the final x, or ``(x, {t: x_t})``
    when ``intermediates`` lists original timesteps to record (each taken at the nearest grid point).
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
            intermediates=intermediates,
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
