"""Noise schedules: β_t and every quantity derived from it, computed once in float64.

Indexing follows improved-diffusion and diffusers: timestep index ``t ∈ {0, …, T-1}`` holds the paper's
β_{t+1} (Ho et al. 2020 number steps 1…T). So ``alphas_cumprod[t]`` is ᾱ_{t+1} and ``alphas_cumprod_prev[t]``
is ᾱ_t, with ᾱ_0 = 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["NoiseSchedule", "cosine_alpha_bar"]


def cosine_alpha_bar(t: Tensor, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal 2021, eq. 17: f(t) = cos²(((t/T + s)/(1 + s))·π/2), for t already divided by T."""
    return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2


class NoiseSchedule:
    """A discrete diffusion schedule of length T.

    All attributes are 1-D float64 tensors of length T (on the CPU):

    - ``betas`` β_t, ``alphas`` α_t = 1 − β_t, ``alphas_cumprod`` ᾱ_t = ∏_{s≤t} α_s,
      ``alphas_cumprod_prev`` ᾱ_{t−1} (1 at t = 0), ``alphas_cumprod_next`` ᾱ_{t+1} (0 at t = T−1);
    - ``sqrt_alphas_cumprod`` √ᾱ_t, ``sqrt_one_minus_alphas_cumprod`` √(1−ᾱ_t),
      ``log_one_minus_alphas_cumprod``, ``sqrt_recip_alphas_cumprod`` 1/√ᾱ_t,
      ``sqrt_recipm1_alphas_cumprod`` √(1/ᾱ_t − 1);
    - the posterior q(x_{t−1} | x_t, x_0) of Ho et al. eq. 6–7: ``posterior_variance`` β̃_t =
      β_t (1−ᾱ_{t−1})/(1−ᾱ_t), ``posterior_log_variance_clipped`` (β̃_0 = 0, so its log uses β̃_1 at t = 0),
      ``posterior_mean_coef1`` = β_t √ᾱ_{t−1}/(1−ᾱ_t) (multiplies x_0) and ``posterior_mean_coef2`` =
      (1−ᾱ_{t−1}) √α_t/(1−ᾱ_t) (multiplies x_t);
    - ``log_snr`` λ_t = log(ᾱ_t/(1−ᾱ_t)), used by DPM-Solver and min-SNR weighting.
    """

    def __init__(self, betas: Tensor | Sequence[float]) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().clone().cpu()
        if betas.ndim != 1 or betas.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
        if not bool(torch.isfinite(betas).all()) or bool((betas <= 0).any()) or bool((betas > 1).any()):
            raise ValueError("betas must be finite and lie in (0, 1]")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        one = torch.ones(1, dtype=torch.float64)
        self.alphas_cumprod_prev = torch.cat([one, self.alphas_cumprod[:-1]])
        self.alphas_cumprod_next = torch.cat([self.alphas_cumprod[1:], torch.zeros(1, dtype=torch.float64)])

        ac = self.alphas_cumprod
        self.sqrt_alphas_cumprod = ac.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ac).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log1p(-ac)
        self.sqrt_recip_alphas_cumprod = ac.rsqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / ac - 1.0).sqrt()
        self.log_snr = torch.log(ac) - torch.log1p(-ac)

        prev = self.alphas_cumprod_prev
        self.posterior_variance = betas * (1.0 - prev) / (1.0 - ac)
        # β̃ at t = 0 is 0; Ho et al. / improved-diffusion clip its log with the value at t = 1.
        pv_clip = torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
        self.posterior_log_variance_clipped = torch.log(pv_clip) if len(betas) > 1 else torch.log(betas)
        self.posterior_mean_coef1 = betas * prev.sqrt() / (1.0 - ac)
        self.posterior_mean_coef2 = (1.0 - prev) * self.alphas.sqrt() / (1.0 - ac)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        """Ho et al. 2020 §4: β linear from ``beta_start`` to ``beta_end`` over T steps (taken as given for any T)."""
        _check_T(T)
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64))

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """Nichol & Dhariwal 2021 eq. 17: β_t = min(1 − ᾱ(t+1)/ᾱ(t), max_beta) with ᾱ from ``cosine_alpha_bar``.

        Same as diffusers' ``squaredcos_cap_v2``. The clip only bites at the last steps, where ᾱ → 0.
        """
        _check_T(T)
        grid = torch.arange(T + 1, dtype=torch.float64) / T
        f = cosine_alpha_bar(grid, s)
        return cls(torch.clamp(1.0 - f[1:] / f[:-1], max=max_beta))

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor | Sequence[float]) -> NoiseSchedule:
        """The schedule whose ᾱ is the given decreasing sequence: β_i = 1 − ᾱ_i/ᾱ_{i−1} (ᾱ_{−1} = 1)."""
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        return cls(1.0 - ac / prev)

    @classmethod
    def from_name(cls, name: str, T: int = 1000) -> NoiseSchedule:
        """``"linear"`` or ``"cosine"`` with their paper defaults."""
        if name == "linear":
            return cls.linear(T)
        if name == "cosine":
            return cls.cosine(T)
        raise ValueError(f"unknown noise schedule {name!r}; choose 'linear' or 'cosine'")

    # ------------------------------------------------------------------ derived schedules
    def respace(self, timesteps: Sequence[int] | Tensor) -> NoiseSchedule:
        """Improved DDPM §4: the schedule of a subsequence S of timesteps (increasing).

        ᾱ'_i = ᾱ_{S_i} and β'_i = 1 − ᾱ_{S_i}/ᾱ_{S_{i−1}}, so the respaced chain has the same marginals
        q(x_t | x_0) at the kept timesteps.
        """
        idx = torch.as_tensor(timesteps, dtype=torch.long)
        if idx.ndim != 1 or idx.numel() == 0:
            raise ValueError("timesteps must be a non-empty 1-D sequence")
        if bool((idx[1:] <= idx[:-1]).any()) or int(idx[0]) < 0 or int(idx[-1]) >= len(self):
            raise ValueError(f"timesteps must be strictly increasing integers in [0, {len(self) - 1}]")
        return NoiseSchedule.from_alphas_cumprod(self.alphas_cumprod[idx])

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def __len__(self) -> int:
        return len(self.betas)

    def __repr__(self) -> str:
        b = self.betas
        return f"NoiseSchedule(T={len(b)}, beta[0]={b[0]:.3g}, beta[-1]={b[-1]:.3g})"


def _check_T(T: int) -> None:
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive integer, got {T!r}")
