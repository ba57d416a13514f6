"""Editing with a trained model: inpainting, image-to-image, inversion and interpolation.

Each method is a function beside :func:`ddpm.sample` over the same ``model(x_t, t)`` callable and
:class:`~ddpm.diffusion.GaussianDiffusion`, so ε-, x₀- and v-prediction, learned variances and classifier-free
guidance (a wrapped model, :func:`ddpm.sampling.classifier_free_guidance`) work wherever the method allows.

- :func:`inpaint` — RePaint (Lugmayr et al. 2022, Algorithm 1): known pixels from q(x_{t−1} | x₀), unknown ones
  from the model's ancestral step, with the resampling jumps of the RePaint repository's ``get_schedule_jump``
  (:func:`jump_schedule`); on a respaced grid (Improved DDPM §4) like every sampler.
- :func:`sdedit` — SDEdit (Meng et al. 2022): x_{t₀} ~ q(x_{t₀} | x) at t₀ = strength·T, then any sampler from
  t₀ down (the samplers run on the diffusion truncated to 0…t₀).
- :func:`invert` — DDIM inversion: the η = 0 update of Song et al. 2021 (eq. 12; eq. 13 as an ODE) run from x₀
  towards x_T, so that ``sample(method="ddim", steps=steps, noise=invert(...))`` reconstructs x₀.
- :func:`interpolate` — invert two images, :func:`slerp` their noises (DDIM §5.3), decode with DDIM.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .diffusion import GaussianDiffusion
from .sampling import ModelFn, _Chain, _progress, _randn_like, sample, timestep_grid

__all__ = [
    "EditError",
    "MASK_PRESETS",
    "mask_preset",
    "inpaint",
    "jump_schedule",
    "sdedit",
    "strength_timestep",
    "invert",
    "slerp",
    "interpolate",
]


class EditError(ValueError):
    """An editing request that cannot be served: a mask of another shape, a strength outside [0, 1], too few
    interpolation frames. The message names the argument."""


def _check_images(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise EditError(f"{name} must be a batch of images [N, C, H, W], got {shape}")
    if not torch.isfinite(x).all():
        raise EditError(f"{name} has non-finite values")


MASK_PRESETS = ("left-half", "right-half", "top-half", "bottom-half", "center", "outside-center", "random:P")


def mask_preset(name: str, size: tuple[int, int], generator: torch.Generator | None = None) -> Tensor:
    """A named inpainting mask [1, 1, H, W] (1: known): ``left-half`` keeps the left half (the right one is filled
    in), likewise ``right-``, ``top-``, ``bottom-half``; ``center`` fills in the central H/2 × W/2 square,
    ``outside-center`` everything but it; ``random:P`` fills in each pixel with probability P (drawn from
    ``generator``)."""
    h, w = size
    m = torch.ones(1, 1, h, w)
    if name == "left-half":
        m[..., w // 2 :] = 0
    elif name == "right-half":
        m[..., : w - w // 2] = 0
    elif name == "top-half":
        m[..., h // 2 :, :] = 0
    elif name == "bottom-half":
        m[..., : h - h // 2, :] = 0
    elif name in ("center", "outside-center"):
        m[..., h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = 0
        m = 1 - m if name == "outside-center" else m
    elif name.startswith("random:"):
        try:
            p = float(name.partition(":")[2])
        except ValueError:
            p = float("nan")
        if not 0.0 <= p <= 1.0:
            raise EditError(f"mask {name!r}: the fraction to fill in must be a number in [0, 1]")
        m = (torch.rand(1, 1, h, w, generator=generator) >= p).float()
    else:
        raise EditError(f"unknown mask preset {name!r}; choose one of {', '.join(MASK_PRESETS)}")
    return m


# --------------------------------------------------------------------------- RePaint
def jump_schedule(num_steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """The time indices RePaint visits (its repository's ``get_schedule_jump`` with ``n_sample=1``).

    Starts at ``num_steps − 1``, ends at −1 (x₀); consecutive entries differ by one: a decrease is a reverse
    step, an increase a forward (noising) step. Every ``jump_length`` indices (at j = 0, L, 2L, … below
    ``num_steps − L``) the chain, on reaching j, jumps back up L steps, ``jump_n_sample − 1`` times in all, so the
    segment above j is traversed ``jump_n_sample`` times (Lugmayr et al. 2022 §4.2, "resampling").
    ``jump_n_sample = 1`` gives the plain chain ``num_steps − 1, …, 0, −1``.
    """
    if num_steps < 1 or jump_length < 1 or jump_n_sample < 1:
        raise EditError(
            f"num_steps, jump_length and jump_n_sample must be ≥ 1, got {num_steps}, {jump_length}, {jump_n_sample}"
        )
    jumps = {j: jump_n_sample - 1 for j in range(0, num_steps - jump_length, jump_length)}
    t, ts = num_steps, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    ts.append(-1)
    return ts


def inpaint(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    x0: Tensor,
    mask: Tensor,
    steps: int | None = None,
    jump_length: int = 10,
    jump_n_sample: int = 10,
    generator: torch.Generator | None = None,
    *,
    spacing: str = "linspace",
    noise: Tensor | None = None,
    clip_denoised: bool = True,
    progress: bool = False,
) -> Tensor:
    """RePaint (Lugmayr et al. 2022, Algorithm 1): fill in the pixels of ``x0`` where ``mask`` is 0.

    On the grid of ``steps`` timesteps (``spacing`` as in :func:`~ddpm.sampling.timestep_grid`; None: all T),
    following :func:`jump_schedule`:

    1. x_T ~ N(0, I) (``noise`` if given), its known part replaced by a draw of q(x_T | x₀);
    2. a reverse step i → i−1: x^unknown = μ_θ(x_i, i) + σ_i z (Ho et al. Algorithm 2, Σ_θ fixed or learned),
       x^known ~ q(x_{i−1} | x₀) = N(√ᾱ_{i−1} x₀, (1 − ᾱ_{i−1}) I), and x_{i−1} = m ⊙ x^known + (1 − m) ⊙ x^unknown;
    3. a forward step i → i+1 (a jump): x_{i+1} ~ q(x_{i+1} | x_i) = N(√(1 − β_{i+1}) x_i, β_{i+1} I), with the
       respaced β of the grid.

    The last step lands on x^known = x₀, so the known pixels are returned exactly. ``jump_n_sample = 1`` is plain
    replacement (no resampling). Model evaluations: about ``steps · jump_n_sample``.

    Args:
        x0: images [N, C, H, W] (values of the unknown pixels are ignored).
        mask: 1 where pixels are known, 0 where they are to be generated; broadcastable to ``x0`` (e.g.
            [N or 1, 1, H, W]), values in [0, 1].
    Returns: [N, C, H, W] float.
    """
    _check_images(x0, "x0")
    if not isinstance(mask, Tensor):
        raise EditError(f"mask must be a tensor, got {type(mask).__name__}")
    try:
        m = torch.broadcast_to(mask.to(x0.device, torch.float32), x0.shape)
    except RuntimeError:
        raise EditError(
            f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(x0.shape)}"
        ) from None
    if not ((m >= 0) & (m <= 1)).all():
        raise EditError("mask values must lie in [0, 1] (1: known pixel, 0: to be filled in)")
    grid = timestep_grid(diffusion.num_timesteps, steps, spacing, diffusion.schedule)
    ts = jump_schedule(len(grid), jump_length, jump_n_sample)
    x0 = x0.float()
    c = _Chain(model, diffusion, grid, x0.shape, noise, generator, x0.device, clip_denoised, None)
    betas = c.d.schedule.betas.tolist()

    def known(i: int) -> Tensor:  # a draw of q(x_i | x₀) on the grid; x₀ itself below index 0
        if i < 0:
            return x0
        t = torch.full((x0.shape[0],), i, dtype=torch.long, device=x0.device)
        return c.d.q_sample(x0, t, _randn_like(x0, generator))

    with torch.no_grad():
        x = m * known(ts[0]) + (1 - m) * c.x
        for t_last, t_cur in _progress(zip(ts[:-1], ts[1:], strict=True), len(ts) - 1, progress):
            if t_cur < t_last:  # reverse step (Algorithm 1, lines 4–8)
                x = m * known(t_cur) + (1 - m) * c.ancestral(x, t_last, generator)
            else:  # resampling jump, one forward step (line 10)
                b = betas[t_cur]
                x = math.sqrt(1 - b) * x + math.sqrt(b) * _randn_like(x, generator)
    return x


# --------------------------------------------------------------------------- SDEdit
def strength_timestep(strength: float, num_timesteps: int) -> int:
    """t₀ = round(strength·T) − 1, the timestep index SDEdit starts from (−1: strength too small to add noise)."""
    if not isinstance(strength, (int, float)) or not 0.0 <= float(strength) <= 1.0:
        raise EditError(f"strength must be in [0, 1], got {strength!r}")
    return int(round(float(strength) * num_timesteps)) - 1


def sdedit(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    x: Tensor,
    strength: float,
    method: str = "ddpm",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    *,
    noise: Tensor | None = None,
    **kw: Any,
) -> Tensor:
    """SDEdit (Meng et al. 2022, Algorithm 1 in discrete time): x_{t₀} = √ᾱ_{t₀} x + √(1 − ᾱ_{t₀}) ε (eq. 4 of Ho
    et al.), t₀ = round(strength·T) − 1, then ``method`` (any key of :data:`~ddpm.sampling.METHODS`) from t₀ to 0.

    The sampler runs on the diffusion truncated to timesteps 0…t₀ (``diffusion.respaced(range(t₀ + 1))``: the
    same ᾱ, the network sees the original timesteps), so ``steps`` counts the steps taken from t₀ down (None:
    every timestep; more than t₀ + 1 are taken as t₀ + 1) and all sampler keywords (``eta``, ``spacing``, ``clip_denoised`` …) apply. Strength 0 returns
    ``x`` unchanged (a copy); strength 1 starts from q(x_{T−1} | x), which differs from ``sample``'s N(0, I) by
    √ᾱ_{T−1}·x. ``noise`` is the ε of the first step (drawn from ``generator`` when None).

    x: [N, C, H, W]; returns [N, C, H, W] float.
    """
    _check_images(x, "x")
    t0 = strength_timestep(strength, diffusion.num_timesteps)
    x = x.float()
    if t0 < 0:
        return x.clone()
    if noise is None:
        noise = _randn_like(x, generator)
    elif noise.shape != x.shape:
        raise EditError(f"noise has shape {tuple(noise.shape)} but x has {tuple(x.shape)}")
    t = torch.full((x.shape[0],), t0, dtype=torch.long, device=x.device)
    x_t = diffusion.q_sample(x, t, noise.to(x.device, x.dtype))
    truncated = diffusion.respaced(range(t0 + 1))
    if steps is not None and not 1 <= steps <= t0 + 1:
        steps = max(1, min(steps, t0 + 1))
    return sample(model, truncated, None, method, steps=steps, generator=generator, noise=x_t, **kw)


# --------------------------------------------------------------------------- DDIM inversion
def invert(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    x0: Tensor,
    steps: int | None = 50,
    *,
    spacing: str = "linspace",
    clip_denoised: bool = True,
    progress: bool = False,
) -> Tensor:
    """DDIM inversion: x₀ → x_T by the deterministic DDIM update (η = 0) run backwards.

    DDIM with η = 0 (Song et al. 2021, eq. 12) is Euler's method for the ODE of eq. 13 in y = x/√ᾱ and
    σ̃ = √((1 − ᾱ)/ᾱ): y_{τ_{i−1}} = y_{τ_i} + (σ̃_{τ_{i−1}} − σ̃_{τ_i}) ε̂. Inversion takes the same steps upwards on
    the same grid τ (``timestep_grid(T, steps, spacing)``, as :func:`ddpm.sampling.ddim` uses), from ᾱ = 1 at x₀:

        y_{τ_i} = y_{τ_{i−1}} + (σ̃_{τ_i} − σ̃_{τ_{i−1}}) ε̂(x_{τ_{i−1}}, τ_i),

    evaluating the network at the point reached so far (the only one known) with the timestep of the next one, as
    diffusers' ``DDIMInverseScheduler`` does. The round trip's error is that of the two Euler solutions and
    shrinks with ``steps``. Use the same ``steps``, ``spacing`` and ``clip_denoised`` to reconstruct.

    x0: [N, C, H, W]; returns x_T [N, C, H, W] float (at τ_{S−1}, T − 1 for the default grid).
    """
    _check_images(x0, "x0")
    grid = timestep_grid(diffusion.num_timesteps, steps, spacing, diffusion.schedule)
    c = _Chain(model, diffusion, grid, None, x0, None, x0.device, clip_denoised, None)
    x = c.x
    with torch.no_grad():
        for i in _progress(range(len(grid)), len(grid), progress):
            _, eps = c.predict(x, i)
            a_prev, a = (c.abar[i - 1] if i > 0 else 1.0), c.abar[i]
            sig_prev, sig = math.sqrt((1 - a_prev) / a_prev), math.sqrt((1 - a) / a)
            x = (x / math.sqrt(a_prev) + (sig - sig_prev) * eps) * math.sqrt(a)
    return x


# --------------------------------------------------------------------------- interpolation
def slerp(z0: Tensor, z1: Tensor, alpha: float | Tensor) -> Tensor:
    """Spherical linear interpolation (Shoemake 1985), as DDIM §5.3 interpolates x_T:

    slerp(z₀, z₁, α) = sin((1 − α)θ)/sin θ · z₀ + sin(αθ)/sin θ · z₁,  θ = arccos(⟨z₀, z₁⟩ / (‖z₀‖ ‖z₁‖)),

    per image (over all but the first dimension); linear where θ is below 1e-4 (parallel noises).
    z0, z1: [N, …]; alpha: a number or [N]; returns [N, …]. α = 0 gives z₀ and α = 1 gives z₁.
    """
    a = torch.as_tensor(alpha, dtype=torch.float64, device=z0.device).reshape(-1, *([1] * (z0.ndim - 1)))
    u, v = z0.double().flatten(1), z1.double().flatten(1)
    cos = (u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1)).clamp_min(1e-30)
    theta = torch.arccos(cos.clamp(-1.0, 1.0)).reshape(-1, *([1] * (z0.ndim - 1)))
    small = theta < 1e-4
    s = torch.where(small, torch.ones_like(theta), torch.sin(theta))
    w0 = torch.where(small, 1 - a, torch.sin((1 - a) * theta) / s)
    w1 = torch.where(small, a, torch.sin(a * theta) / s)
    return (w0 * z0.double() + w1 * z1.double()).to(z0.dtype)


def interpolate(
    model: ModelFn,
    diffusion: GaussianDiffusion,
    xa: Tensor,
    xb: Tensor,
    n: int,
    steps: int | None = 50,
    *,
    spacing: str = "linspace",
    clip_denoised: bool = True,
    progress: bool = False,
) -> Tensor:
    """Interpolate between images through their DDIM noises (Song et al. 2021 §5.3): x_T^a, x_T^b by
    :func:`invert`, x_T(α) = :func:`slerp` (x_T^a, x_T^b, α) for α = 0, 1/(n−1), …, 1, each decoded by DDIM
    (η = 0) on the same grid; the ends reconstruct xa and xb up to the inversion error.

    xa, xb: [N, C, H, W] (pairs) or [C, H, W]; returns [n, N, C, H, W] (or [n, C, H, W]).
    """
    single = isinstance(xa, Tensor) and xa.ndim == 3
    if single:
        xa, xb = xa[None], xb[None] if isinstance(xb, Tensor) else xb
    _check_images(xa, "xa")
    _check_images(xb, "xb")
    if xa.shape != xb.shape:
        raise EditError(f"xa and xb must have the same shape, got {tuple(xa.shape)} and {tuple(xb.shape)}")
    if not isinstance(n, int) or n < 2:
        raise EditError(f"n must be an integer ≥ 2 (both ends and n − 2 frames between), got {n!r}")
    opts: dict[str, Any] = {"spacing": spacing, "clip_denoised": clip_denoised}
    z = invert(model, diffusion, torch.cat([xa, xb]), steps, progress=progress, **opts)
    za, zb = z[: len(xa)], z[len(xa) :]
    alphas = torch.linspace(0, 1, n, dtype=torch.float64)
    noises = torch.cat([slerp(za, zb, float(a)) for a in alphas])
    out = sample(model, diffusion, None, "ddim", steps=steps, noise=noises, progress=progress, **opts)
    out = out.reshape(n, *xa.shape)
    return out[:, 0] if single else out
