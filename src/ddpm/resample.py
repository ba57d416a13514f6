"""Timestep samplers for training: which t each example is trained at, and the weight that keeps the loss unbiased.

A sampler draws t ~ p and returns weights w_t = 1/(T·p_t), so E_{t~p}[w_t L_t] = (1/T) Σ_t L_t: the uniform-t
objective, whatever p is. Samplers that learn p from the losses are fed the per-example losses after each
micro-batch (:meth:`TimestepSampler.update_with_losses`).

- :class:`UniformSampler` — t ~ U{0, …, T−1}, weights 1 (Ho et al. 2020). Draws exactly what
  :meth:`ddpm.GaussianDiffusion.sample_timesteps` draws, so training with it is bit-identical to not having one.
- :class:`LossSecondMomentResampler` — Improved DDPM §3.3 (Nichol & Dhariwal 2021, eq. 18): keeps the last
  ``history`` losses of every t and, once each t has them all, samples p_t ∝ √E[L_t²], mixed with a small
  uniform share so no t is starved. It makes the noisy L_vlb objective trainable; before the warm-up it is uniform.

State (:meth:`~TimestepSampler.state_dict`) holds only tensors and ints, so it fits a checkpoint loaded with
``torch.load(weights_only=True)``, and a resumed run draws exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .diffusion import GaussianDiffusion

__all__ = [
    "TimestepSampler",
    "UniformSampler",
    "LossSecondMomentResampler",
    "SAMPLERS",
    "create_timestep_sampler",
]


class TimestepSampler:
    """Base class: a distribution p over the T timesteps, sampled with importance weights 1/(T·p_t)."""

    def __init__(self, diffusion: GaussianDiffusion) -> None:
        self.diffusion = diffusion
        self.num_timesteps = diffusion.num_timesteps

    def probabilities(self) -> Tensor:
        """p over 0…T−1 (float64, sums to 1)."""
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)

    def sample(
        self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``n`` timesteps [n] (long) drawn from p and their weights 1/(T·p_t) [n] (float32), on ``device``."""
        p = self.probabilities()
        gen_device = generator.device if generator is not None else torch.device(device)
        t = torch.multinomial(p.to(gen_device), n, replacement=True, generator=generator).to(device)
        weights = (1.0 / (self.num_timesteps * p))[t.cpu()].to(device=device, dtype=torch.float32)
        return t, weights

    def update_with_losses(self, t: Tensor, losses: Tensor) -> None:
        """Record the per-example losses [N] observed at timesteps ``t`` [N]; a no-op unless p is learned."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")


class UniformSampler(TimestepSampler):
    """t ~ U{0, …, T−1} with weights 1: the same draws as ``diffusion.sample_timesteps``."""

    def sample(
        self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        t = self.diffusion.sample_timesteps(n, device, generator)
        return t, torch.ones(n, device=device)


class LossSecondMomentResampler(TimestepSampler):
    """Importance sampling of t by the loss's second moment (Improved DDPM §3.3).

    Keeps the last ``history`` losses of every timestep. Until every t has ``history`` of them, t is uniform
    (weights 1). After that p_t = (1 − u)·√E[L_t²]/Σ_s √E[L_s²] + u/T with u = ``uniform_prob``, and each example is
    weighted by 1/(T·p_t), which keeps the objective's expectation that of uniform t while spending the samples
    where the loss varies most — the variance of the VLB estimate is minimised by p_t ∝ √E[L_t²].
    """

    def __init__(self, diffusion: GaussianDiffusion, history: int = 10, uniform_prob: float = 0.001) -> None:
        super().__init__(diffusion)
        if history < 1:
            raise ValueError(f"history must be at least 1, got {history}")
        if not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob must be in [0, 1], got {uniform_prob}")
        self.history = int(history)
        self.uniform_prob = float(uniform_prob)
        # _losses[t, :_counts[t]] are the newest ≤ history losses of t, oldest first (numpy: cheap scalar updates).
        self._losses = np.zeros((self.num_timesteps, self.history), dtype=np.float64)
        self._counts = np.zeros(self.num_timesteps, dtype=np.int64)

    @property
    def warmed_up(self) -> bool:
        return bool((self._counts == self.history).all())

    def probabilities(self) -> Tensor:
        if not self.warmed_up:
            return super().probabilities()
        w = torch.from_numpy(np.sqrt((self._losses**2).mean(axis=1)))
        total = float(w.sum())
        if not math.isfinite(total) or total <= 0:  # all losses zero: nothing to prefer
            return super().probabilities()
        return (1.0 - self.uniform_prob) * w / total + self.uniform_prob / self.num_timesteps

    def sample(
        self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        if not self.warmed_up:  # uniform, drawn exactly as UniformSampler draws
            return self.diffusion.sample_timesteps(n, device, generator), torch.ones(n, device=device)
        return super().sample(n, device, generator)

    def update_with_losses(self, t: Tensor, losses: Tensor) -> None:
        """Append each (t, loss) in order (non-finite losses are skipped). Under ``torch.distributed`` the pairs of
        all ranks are gathered first, so every rank keeps the same history and draws from the same p."""
        t, losses = _gather(t.detach().reshape(-1), losses.detach().reshape(-1).to(torch.float64))
        for ti, li in zip(t.tolist(), losses.tolist(), strict=True):
            if not math.isfinite(li):
                continue
            c = self._counts[ti]
            if c == self.history:
                self._losses[ti, :-1] = self._losses[ti, 1:]
                self._losses[ti, -1] = li
            else:
                self._losses[ti, c] = li
                self._counts[ti] = c + 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": torch.from_numpy(self._losses.copy()),
            "counts": torch.from_numpy(self._counts.copy()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        losses = torch.as_tensor(state["losses"], dtype=torch.float64).cpu().numpy()
        counts = torch.as_tensor(state["counts"], dtype=torch.long).cpu().numpy()
        if losses.shape != self._losses.shape or counts.shape != self._counts.shape:
            raise ValueError(
                f"timestep-sampler state has shape {losses.shape} but this run needs "
                f"{self._losses.shape} (T × history)"
            )
        if bool((counts < 0).any() or (counts > self.history).any()):
            raise ValueError(f"timestep-sampler counts must lie in 0..{self.history}")
        self._losses = losses.copy()
        self._counts = counts.copy()


def _gather(t: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
    """(t, losses) of every rank, rank 0 first, on the CPU; just the local ones outside ``torch.distributed``."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t.cpu(), losses.cpu()
    world = dist.get_world_size()
    n = torch.tensor([t.numel()], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    m = int(max(int(s) for s in sizes))
    pad_t = torch.zeros(m, dtype=t.dtype, device=t.device)
    pad_l = torch.zeros(m, dtype=losses.dtype, device=losses.device)
    pad_t[: t.numel()], pad_l[: losses.numel()] = t, losses
    all_t = [torch.zeros_like(pad_t) for _ in range(world)]
    all_l = [torch.zeros_like(pad_l) for _ in range(world)]
    dist.all_gather(all_t, pad_t)
    dist.all_gather(all_l, pad_l)
    k = [int(s) for s in sizes]
    return (
        torch.cat([a[:c] for a, c in zip(all_t, k, strict=True)]).cpu(),
        torch.cat([a[:c] for a, c in zip(all_l, k, strict=True)]).cpu(),
    )


SAMPLERS: dict[str, type[TimestepSampler]] = {
    "uniform": UniformSampler,
    "loss_aware": LossSecondMomentResampler,
}


def create_timestep_sampler(name: str, diffusion: GaussianDiffusion) -> TimestepSampler:
    """The sampler ``diffusion.timestep_sampler`` names: ``"uniform"`` or ``"loss_aware"``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown timestep sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name](diffusion)
