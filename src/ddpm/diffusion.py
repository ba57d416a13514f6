"""Gaussian diffusion: the forward process, its posterior, model-output conversions and losses.

The network is a plain callable returning a tensor; this module interprets that tensor according to
``prediction`` (what the first C channels predict) and ``variance`` (fixed, or learned from C more channels).
Equation numbers refer to Ho et al. 2020 ("DDPM") and Nichol & Dhariwal 2021 ("Improved DDPM").

Longer than ~400 lines on purpose: the paper's quantities (forward process, posterior, parameterisations,
losses, the bound) are one set of equations over the same tables, read best in one place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, get_args

import torch
from torch import Tensor

from .schedule import NoiseSchedule

__all__ = [
    "GaussianDiffusion",
    "PMeanVar",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
]

Prediction = Literal["eps", "x0", "v"]
Variance = Literal["fixed_small", "fixed_large", "learned_range"]
LossType = Literal["mse", "hybrid", "vlb"]
Weighting = Literal["none", "min_snr"]

_PREDICTIONS: tuple[str, ...] = get_args(Prediction)
_VARIANCES: tuple[str, ...] = get_args(Variance)
_LOSSES: tuple[str, ...] = get_args(LossType)
_WEIGHTINGS: tuple[str, ...] = get_args(Weighting)


class _Tables(NamedTuple):
    """The per-timestep coefficients the diffusion math reads, [T] each, precomputed once from the schedule (float64;
    copied to each device once). Named as in Ho et al. / improved-diffusion."""

    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    posterior_mean_coef1: Tensor  # eq. 7
    posterior_mean_coef2: Tensor
    posterior_variance: Tensor  # β̃_t
    posterior_log_variance_clipped: Tensor
    log_betas: Tensor
    large_variance: Tensor  # σ² = β (β̃₁ at t = 0)
    large_log_variance: Tensor
    snr: Tensor  # ᾱ/(1 − ᾱ)


class PMeanVar(NamedTuple):
    """Output of :meth:`GaussianDiffusion.p_mean_variance`; every tensor has the shape of x_t."""

    mean: Tensor
    variance: Tensor
    log_variance: Tensor
    pred_x0: Tensor
    pred_eps: Tensor


def mean_flat(x: Tensor) -> Tensor:
    """Mean over all but the first dimension: [N, ...] → [N]."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _log_standard_normal_cdf(x: Tensor) -> Tensor:
    return torch.special.log_ndtr(x)


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """log p(x) under the discretized Gaussian decoder of Ho et al. §3.3 (eq. 13), elementwise, in nats.

    ``x`` holds pixels of 8-bit images scaled to [−1, 1] (values (2k − 255)/255); each value owns a bin of width
    2/255, and the edge bins extend to ±∞. ``log_scales`` is log σ (half the log variance). Uses the exact normal
    CDF (Ho et al. used a tanh approximation), so the 256 bin probabilities sum to one.
    """
    centered = x - means
    inv_std = torch.exp(-log_scales)
    upper = inv_std * (centered + 1.0 / 255.0)
    lower = inv_std * (centered - 1.0 / 255.0)
    log_cdf_upper = _log_standard_normal_cdf(upper)  # log Φ(upper): used at the bottom edge bin
    log_one_minus_cdf_lower = _log_standard_normal_cdf(-lower)  # log(1 − Φ(lower)): top edge bin
    # log(Φ(upper) − Φ(lower)) computed stably as log Φ(upper) + log1p(−exp(log Φ(lower) − log Φ(upper))),
    # mirrored to the upper tail where that is more accurate.
    mid_left = log_cdf_upper + torch.log1p(
        -torch.exp(_log_standard_normal_cdf(lower) - log_cdf_upper).clamp(max=1 - 1e-12)
    )
    mid_right = log_one_minus_cdf_lower + torch.log1p(
        -torch.exp(_log_standard_normal_cdf(-upper) - log_one_minus_cdf_lower).clamp(max=1 - 1e-12)
    )
    log_mid = torch.where(centered < 0, mid_left, mid_right)
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_one_minus_cdf_lower, log_mid))


class GaussianDiffusion:
    """The DDPM forward process q and the reverse model p_θ built on a :class:`NoiseSchedule`.

    Args:
        schedule: the β schedule (length T).
        prediction: what the network's first C output channels predict — ``"eps"`` (Ho et al. eq. 11),
            ``"x0"`` or ``"v"`` (v = √ᾱ ε − √(1−ᾱ) x₀, Salimans & Ho 2022).
        variance: Σ_θ of p_θ(x_{t−1}|x_t): ``"fixed_small"`` (β̃_t), ``"fixed_large"`` (β_t, with β̃_1 at t = 0 as in
            Ho et al.'s code), or ``"learned_range"`` (Improved DDPM eq. 15; the network outputs 2·C channels).
        loss: ``"mse"`` (L_simple, eq. 14), ``"hybrid"`` (L_simple + λ L_vlb with stop-gradient on the mean,
            Improved DDPM §3.1) or ``"vlb"`` (L_vlb alone).
        vlb_weight: λ of the hybrid loss (Improved DDPM uses 0.001).
        weighting: ``"none"`` or ``"min_snr"`` (Hang et al. 2023) for the MSE term; ``min_snr_gamma`` is its γ.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: Prediction = "eps",
        variance: Variance = "fixed_small",
        loss: LossType = "mse",
        vlb_weight: float = 0.001,
        weighting: Weighting = "none",
        min_snr_gamma: float = 5.0,
    ) -> None:
        for value, allowed, what in (
            (prediction, _PREDICTIONS, "prediction"),
            (variance, _VARIANCES, "variance"),
            (loss, _LOSSES, "loss"),
            (weighting, _WEIGHTINGS, "weighting"),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
        if loss == "hybrid" and variance != "learned_range":
            raise ValueError("loss='hybrid' trains the variance: it needs variance='learned_range'")
        self.schedule = schedule
        self.prediction = prediction
        self.variance = variance
        self.loss_type = loss
        self.vlb_weight = float(vlb_weight)
        self.weighting = weighting
        self.min_snr_gamma = float(min_snr_gamma)
        # timestep_map[i] is the timestep of the original (unrespaced) process the network is conditioned on.
        self.timestep_map = torch.arange(len(schedule), dtype=torch.long)
        s = schedule
        large = torch.cat([s.posterior_variance[1:2], s.betas[1:]]) if len(s) > 1 else s.betas
        self._tables = _Tables(
            sqrt_alphas_cumprod=s.sqrt_alphas_cumprod,
            sqrt_one_minus_alphas_cumprod=s.sqrt_one_minus_alphas_cumprod,
            sqrt_recip_alphas_cumprod=s.sqrt_recip_alphas_cumprod,
            sqrt_recipm1_alphas_cumprod=s.sqrt_recipm1_alphas_cumprod,
            posterior_mean_coef1=s.posterior_mean_coef1,
            posterior_mean_coef2=s.posterior_mean_coef2,
            posterior_variance=s.posterior_variance,
            posterior_log_variance_clipped=s.posterior_log_variance_clipped,
            log_betas=torch.log(s.betas),
            large_variance=large,
            large_log_variance=torch.log(large),
            snr=s.alphas_cumprod / (1.0 - s.alphas_cumprod),
        )
        self._device_tables: dict[torch.device, _Tables] = {}
        self._device_maps: dict[torch.device, Tensor] = {}

    # ------------------------------------------------------------------ bookkeeping
    @property
    def num_timesteps(self) -> int:
        return len(self.schedule)

    def output_channels(self, channels: int) -> int:
        """How many channels the network must output for images with ``channels`` channels."""
        return 2 * channels if self.variance == "learned_range" else channels

    def respaced(self, timesteps: Sequence[int] | Tensor) -> GaussianDiffusion:
        """Improved DDPM §4: the same model on a subsequence of timesteps (increasing, original indices).

        The returned diffusion's index i corresponds to original timestep ``timesteps[i]``; its betas are
        recomputed from ᾱ so the chain keeps the original marginals. ``timestep_map`` maps back.
        """
        idx = torch.as_tensor(timesteps, dtype=torch.long)
        new = GaussianDiffusion(
            self.schedule.respace(idx),
            prediction=self.prediction,
            variance=self.variance,
            loss=self.loss_type,
            vlb_weight=self.vlb_weight,
            weighting=self.weighting,
            min_snr_gamma=self.min_snr_gamma,
        )
        new.timestep_map = self.timestep_map[idx]
        return new

    def extract(
        self, name: str, t: Tensor, shape: Sequence[int], dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """Gather table ``name`` (a field of the coefficient tables, e.g. ``"snr"``) at timesteps ``t`` [N] and
        reshape to [N, 1, …] broadcastable to ``shape``."""
        return self._gather(getattr(self._on(t.device), name), t, shape, dtype)

    def _on(self, device: torch.device) -> _Tables:
        """The coefficient tables on ``device``: float64 where the device has it, copied once (no per-step
        host-to-device copy)."""
        tables = self._device_tables.get(device)
        if tables is None:
            dtype = torch.float64 if device.type in ("cpu", "cuda") else torch.float32
            tables = _Tables(*(v.to(device=device, dtype=dtype) for v in self._tables))
            self._device_tables[device] = tables
        return tables

    @staticmethod
    def _gather(table: Tensor, t: Tensor, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
        return table[t].to(dtype).reshape(t.shape[0], *([1] * (len(shape) - 1)))

    def _timesteps(self, t: Tensor) -> Tensor:
        """The original timesteps the network is conditioned on for indices ``t`` (cached per device)."""
        cached = self._device_maps.get(t.device)
        if cached is None:
            cached = self._device_maps[t.device] = self.timestep_map.to(t.device)
        return cached[t]

    def _c(self, table: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """``table`` (a field of :meth:`_on`) at ``t``, shaped to broadcast against ``x`` and in its precision."""
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        return self._gather(table, t, x.shape, dtype)

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean √ᾱ_t x₀ and variance (1−ᾱ_t) of q(x_t | x₀) (eq. 4); variance shaped [N, 1, …]."""
        return self._c(self._on(t.device).sqrt_alphas_cumprod, t, x0) * x0, self._c(
            self._on(t.device).sqrt_one_minus_alphas_cumprod, t, x0
        ) ** 2

    def q_sample(
        self, x0: Tensor, t: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Sample x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε in closed form (eq. 4). x0, noise: [N, …]; t: [N] long."""
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return (
            self._c(self._on(t.device).sqrt_alphas_cumprod, t, x0) * x0
            + self._c(self._on(t.device).sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance β̃_t and clipped log-variance of q(x_{t−1} | x_t, x₀) (eq. 6–7)."""
        mean = (
            self._c(self._on(t.device).posterior_mean_coef1, t, x_t) * x0
            + self._c(self._on(t.device).posterior_mean_coef2, t, x_t) * x_t
        )
        return (
            mean,
            self._c(self._on(t.device).posterior_variance, t, x_t),
            self._c(self._on(t.device).posterior_log_variance_clipped, t, x_t),
        )

    # ------------------------------------------------------------------ parameterizations
    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x̂₀ = x_t/√ᾱ_t − √(1/ᾱ_t − 1) ε (eq. 4 solved for x₀)."""
        return (
            self._c(self._on(t.device).sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self._c(self._on(t.device).sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """ε̂ = (x_t/√ᾱ_t − x₀)/√(1/ᾱ_t − 1)."""
        return (self._c(self._on(t.device).sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / self._c(
            self._on(t.device).sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def get_v(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """The v target of Salimans & Ho 2022: v = √ᾱ_t ε − √(1−ᾱ_t) x₀."""
        return (
            self._c(self._on(t.device).sqrt_alphas_cumprod, t, x0) * eps
            - self._c(self._on(t.device).sqrt_one_minus_alphas_cumprod, t, x0) * x0
        )

    def predict_x0_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """x̂₀ = √ᾱ_t x_t − √(1−ᾱ_t) v."""
        return (
            self._c(self._on(t.device).sqrt_alphas_cumprod, t, x_t) * x_t
            - self._c(self._on(t.device).sqrt_one_minus_alphas_cumprod, t, x_t) * v
        )

    def split_output(self, model_output: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor | None]:
        """Split the network output into the mean part [N, C, …] and, for learned variance, the variance part."""
        c = x_t.shape[1]
        expected = self.output_channels(c)
        if model_output.shape[1] != expected or model_output.shape[2:] != x_t.shape[2:]:
            raise ValueError(
                f"model output has shape {tuple(model_output.shape)} but variance={self.variance!r} needs "
                f"{expected} channels at {tuple(x_t.shape[2:])}"
            )
        if self.variance == "learned_range":
            return model_output[:, :c], model_output[:, c:]
        return model_output, None

    def model_predictions(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = True
    ) -> tuple[Tensor, Tensor]:
        """(x̂₀, ε̂) from the network output; x̂₀ optionally clipped to [−1, 1] and ε̂ made consistent with it."""
        out, _ = self.split_output(model_output, x_t)
        out = out.float() if out.dtype not in (torch.float32, torch.float64) else out
        if self.prediction == "eps":
            x0, eps = self.predict_x0_from_eps(x_t, t, out), out
        elif self.prediction == "x0":
            x0, eps = out, None
        else:
            x0, eps = self.predict_x0_from_v(x_t, t, out), None
        if clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
            eps = None
        if eps is None:
            eps = self.predict_eps_from_x0(x_t, t, x0)
        return x0, eps

    def p_mean_variance(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = True
    ) -> PMeanVar:
        """Mean and variance of p_θ(x_{t−1} | x_t) from the network output (eq. 11 via x̂₀ and eq. 7).

        model_output: [N, C or 2C, …]; x_t: [N, C, …]; t: [N] long (indices of this diffusion).
        """
        _, var_out = self.split_output(model_output, x_t)
        x0, eps = self.model_predictions(model_output, x_t, t, clip_denoised)
        mean, _, _ = self.q_posterior(x0, x_t, t)
        if self.variance == "fixed_small":
            var, log_var = (
                self._c(self._on(t.device).posterior_variance, t, x_t),
                self._c(self._on(t.device).posterior_log_variance_clipped, t, x_t),
            )
            var, log_var = var.expand_as(x_t), log_var.expand_as(x_t)
        elif self.variance == "fixed_large":
            var, log_var = (
                self._c(self._on(t.device).large_variance, t, x_t),
                self._c(self._on(t.device).large_log_variance, t, x_t),
            )
            var, log_var = var.expand_as(x_t), log_var.expand_as(x_t)
        else:  # learned_range: split_output returned the variance half
            assert var_out is not None
            # Improved DDPM eq. 15: Σ = exp(v log β_t + (1 − v) log β̃_t), v = (out + 1)/2 ∈ [0, 1].
            frac = (var_out.float() + 1.0) / 2.0
            min_log = self._c(self._on(t.device).posterior_log_variance_clipped, t, x_t)
            max_log = self._c(self._on(t.device).log_betas, t, x_t)
            log_var = frac * max_log + (1.0 - frac) * min_log
            var = torch.exp(log_var)
        return PMeanVar(mean, var, log_var, x0, eps)

    # ------------------------------------------------------------------ training
    def sample_timesteps(
        self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> Tensor:
        """t ~ U{0, …, T−1}, shape [n]."""
        return torch.randint(0, self.num_timesteps, (n,), generator=generator, device=device)

    def training_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network's mean channels regress onto for this ``prediction``."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return self.get_v(x0, noise, t)

    def mse_weight(self, t: Tensor) -> Tensor:
        """Per-example weight [N] of the MSE term; min-SNR-γ (Hang et al. 2023) converts to each target."""
        if self.weighting == "none":
            return torch.ones(t.shape, device=t.device)
        snr = self._gather(self._on(t.device).snr, t, t.shape, torch.float32)
        clipped = snr.clamp(max=self.min_snr_gamma)
        if self.prediction == "eps":
            return clipped / snr
        if self.prediction == "v":
            return clipped / (snr + 1.0)
        return clipped

    def training_losses(
        self,
        model: Callable[..., Tensor],
        x0: Tensor,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        model_kwargs: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Per-example training losses for a batch x0 [N, C, …]; every returned tensor has shape [N].

        Keys: ``loss`` (what to minimise: L_simple, L_hybrid or L_vlb per ``loss``), ``mse`` and, when a VLB term is
        used, ``vb`` (the bound's term L_t in bits/dim, scaled by T so that its mean over t estimates L_vlb).
        """
        if t is None:
            t = self.sample_timesteps(x0.shape[0], x0.device, generator)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        model_output = model(x_t, self._timesteps(t), **(model_kwargs or {}))
        mean_out, var_out = self.split_output(model_output, x_t)
        terms: dict[str, Tensor] = {}
        target = self.training_target(x0, noise, t)
        terms["mse"] = mean_flat((target - mean_out.float()) ** 2)
        if var_out is not None:
            # Stop-gradient on the mean so the VLB term trains only the variance (Improved DDPM §3.1).
            frozen = torch.cat([mean_out.detach(), var_out], dim=1)
            terms["vb"] = self.vb_terms_bpd(frozen, x0, x_t, t, clip_denoised=False)[0] * self.num_timesteps
        if self.loss_type == "mse":
            terms["loss"] = self.mse_weight(t) * terms["mse"]
        elif self.loss_type == "hybrid":
            terms["loss"] = self.mse_weight(t) * terms["mse"] + self.vlb_weight * terms["vb"]
        else:
            # Pure L_vlb trains mean and variance together (no stop-gradient).
            terms["vb"] = (
                self.vb_terms_bpd(model_output, x0, x_t, t, clip_denoised=False)[0] * self.num_timesteps
            )
            terms["loss"] = terms["vb"]
        return terms

    # ------------------------------------------------------------------ variational bound
    def vb_terms_bpd(
        self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool = False
    ) -> tuple[Tensor, Tensor]:
        """One term of L_vlb (eq. 5) per example, in bits/dim, and x̂₀.

        For t > 0: L_{t} = KL(q(x_{t−1}|x_t, x₀) ‖ p_θ(x_{t−1}|x_t)); for t = 0: L_0 = −log p_θ(x₀|x₁) under the
        discretized Gaussian decoder. Returns ([N], [N, C, …]).
        """
        true_mean, _, true_log_var = self.q_posterior(x0, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out.mean, out.log_variance)) / math.log(2.0)
        nll = -mean_flat(
            discretized_gaussian_log_likelihood(x0, out.mean, 0.5 * out.log_variance)
        ) / math.log(2.0)
        return torch.where(t == 0, nll, kl), out.pred_x0

    def prior_bpd(self, x0: Tensor) -> Tensor:
        """L_T = KL(q(x_T|x₀) ‖ N(0, I)) per example in bits/dim, shape [N]."""
        t = torch.full((x0.shape[0],), self.num_timesteps - 1, device=x0.device, dtype=torch.long)
        mean, var = self.q_mean_variance(x0, t)
        zeros = torch.zeros_like(mean)
        return mean_flat(normal_kl(mean, torch.log(var).expand_as(mean), zeros, zeros)) / math.log(2.0)

    @torch.no_grad()
    def bits_per_dim(
        self,
        model: Callable[..., Tensor],
        x0: Tensor,
        clip_denoised: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """The full variational bound L_T + Σ_t L_{t−1} + L_0 (eq. 5) for a batch, in bits/dim.

        Runs the network once per timestep (T evaluations). Returns ``total_bpd`` [N], ``prior_bpd`` [N],
        ``vb`` [N, T] (term per timestep) and ``x0_mse`` [N, T].
        """
        n = x0.shape[0]
        vb, mse = [], []
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((n,), i, device=x0.device, dtype=torch.long)
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            x_t = self.q_sample(x0, t, noise)
            out = model(x_t, self._timesteps(t), **(model_kwargs or {}))
            term, pred_x0 = self.vb_terms_bpd(out, x0, x_t, t, clip_denoised)
            vb.append(term)
            mse.append(mean_flat((pred_x0 - x0) ** 2))
        vb_t = torch.stack(vb[::-1], dim=1)
        prior = self.prior_bpd(x0)
        return {
            "total_bpd": vb_t.sum(dim=1) + prior,
            "prior_bpd": prior,
            "vb": vb_t,
            "x0_mse": torch.stack(mse[::-1], 1),
        }

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(T={self.num_timesteps}, prediction={self.prediction!r}, "
            f"variance={self.variance!r}, loss={self.loss_type!r})"
        )
