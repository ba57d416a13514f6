"""Progressive distillation (Salimans & Ho 2022, Algorithm 2): a student learns to take in one deterministic DDIM
step what the teacher takes in two; each round halves the step count and the student becomes the next teacher.

Discrete time: the N-step sampler runs DDIM (η = 0) on the ``trailing`` grid p_j = (j + 1)·T/N − 1, j < N
(:func:`ddpm.sampling.timestep_grid`), from p_{N−1} = T − 1 down to p_0 and from there to x̂₀ (ᾱ = 1). The 2N-step
grid q holds the N-step one at its odd positions, q_{2j+1} = p_j, so the student's step p_j → p_{j−1} is the
teacher's two steps q_{2j+1} → q_{2j} → q_{2j−1} (p_{−1} = q_{−1} = "clean", ᾱ = 1). With α = √ᾱ, σ = √(1 − ᾱ):

    z_{t'}  = α_{t'} x̂_η(z_t) + (σ_{t'}/σ_t)(z_t − α_t x̂_η(z_t))           (a DDIM step of the teacher)
    z_{t''} = α_{t''} x̂_η(z_{t'}) + (σ_{t''}/σ_{t'})(z_{t'} − α_{t'} x̂_η(z_{t'}))
    x̃       = (z_{t''} − (σ_{t''}/σ_t) z_t) / (α_{t''} − (σ_{t''}/σ_t) α_t)    (Alg. 2; eq. 8)

so that one student DDIM step from z_t with x̂ = x̃ lands exactly on z_{t''}. The loss is w(λ_t)‖x̃ − x̂_θ(z_t)‖² with
the paper's truncated-SNR weighting w = max(SNR, 1) or the SNR + 1 weighting (the v-loss). x̂ comes from the
diffusion's own reading of a network output (ε-, x₀- or v-prediction; teacher clipped as its sampler clips).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..diffusion import GaussianDiffusion
from ..sampling import timestep_grid

__all__ = [
    "ProgressiveDistillation",
    "WEIGHTINGS",
    "Weighting",
    "ddim_step",
    "rounds",
    "student_grid",
    "teacher_points",
]

Weighting = Literal["snr_trunc", "snr+1"]
WEIGHTINGS: tuple[str, ...] = ("snr_trunc", "snr+1")
ModelFn = Callable[..., Tensor]
CLEAN = -1  # the "timestep" after the last step: x̂₀, ᾱ = 1


def student_grid(num_timesteps: int, steps: int) -> list[int]:
    """The N-step sampler's timesteps p_0 < … < p_{N−1} (the ``trailing`` grid, p_{N−1} = T − 1)."""
    return timestep_grid(num_timesteps, steps, "trailing")


def teacher_points(num_timesteps: int, steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """For a student of ``steps`` steps: (t, t', t'') [N] long, the start of each student step j and the two
    teacher steps it replaces (:data:`CLEAN` = −1 for x̂₀). Raises ValueError when the 2N grid does not nest."""
    p, q = student_grid(num_timesteps, steps), student_grid(num_timesteps, 2 * steps)
    if [q[2 * j + 1] for j in range(steps)] != p:
        raise ValueError(
            f"the {2 * steps}-step grid does not contain the {steps}-step one (T={num_timesteps})"
        )
    t = torch.tensor(p, dtype=torch.long)
    t1 = torch.tensor(q[0::2], dtype=torch.long)
    t2 = torch.tensor([CLEAN] + q[1::2][:-1], dtype=torch.long)
    return t, t1, t2


def _alpha_sigma(diffusion: GaussianDiffusion, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """α_t = √ᾱ_t and σ_t = √(1 − ᾱ_t) at timesteps t [N] (−1: α = 1, σ = 0), shaped [N, 1, …] in float64."""
    abar = torch.cat([torch.ones(1, dtype=torch.float64), diffusion.schedule.alphas_cumprod])
    a = abar.to(like.device)[(t + 1).to(like.device)].reshape(-1, *([1] * (like.ndim - 1)))
    return a.sqrt(), (1.0 - a).clamp(min=0.0).sqrt()


def ddim_step(diffusion: GaussianDiffusion, x0: Tensor, z: Tensor, t: Tensor, t_to: Tensor) -> Tensor:
    """One DDIM step (η = 0, Song et al. 2021 eq. 12) from z at t [N] to t_to [N] given x̂₀:
    α_{t_to} x̂₀ + (σ_{t_to}/σ_t)(z − α_t x̂₀)."""
    a, s = _alpha_sigma(diffusion, t, z)
    a2, s2 = _alpha_sigma(diffusion, t_to, z)
    out = a2 * x0.double() + (s2 / s) * (z.double() - a * x0.double())
    return out.to(z.dtype)


class ProgressiveDistillation:
    """The round state of Algorithm 2 and its loss: the teacher of this round (a frozen copy) and its diffusion,
    the student's step count N and its grid.

    Args:
        teacher: the network ``model(x_t, t, **kw)`` of the first round (not modified: it is copied).
        teacher_diffusion: how its output is read (its ``prediction``).
        student_diffusion: how the student's output is read (v or x₀: Salimans & Ho §4).
        steps: the student's step count in this round (the teacher takes 2·``steps``).
        weighting: ``"snr_trunc"`` (max(SNR, 1)) or ``"snr+1"``.
        clip: clip the teacher's x̂₀ to [−1, 1], as its sampler does for images.
    """

    def __init__(
        self,
        teacher: nn.Module | ModelFn,
        teacher_diffusion: GaussianDiffusion,
        student_diffusion: GaussianDiffusion,
        steps: int,
        weighting: Weighting = "snr_trunc",
        clip: bool = True,
    ) -> None:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        if student_diffusion.num_timesteps != teacher_diffusion.num_timesteps:
            raise ValueError("the student and the teacher must share the number of timesteps")
        self.teacher = _frozen(teacher)
        self.teacher_diffusion, self.student_diffusion = teacher_diffusion, student_diffusion
        self.weighting, self.clip = weighting, clip
        self.steps = 0
        self._set_steps(steps)

    def _set_steps(self, steps: int) -> None:
        self.t, self.t1, self.t2 = teacher_points(self.student_diffusion.num_timesteps, steps)
        self.steps = steps

    @property
    def teacher_steps(self) -> int:
        return 2 * self.steps

    def next_round(self, student: nn.Module) -> None:
        """η ← θ, N ← N/2: ``student`` (copied) becomes the teacher, read as the student is."""
        if self.steps % 2:
            raise ValueError(f"cannot halve {self.steps} student steps")
        self.teacher = _frozen(student)
        self.teacher_diffusion = self.student_diffusion
        self._set_steps(self.steps // 2)

    @torch.no_grad()
    def target(self, z: Tensor, j: Tensor, **kw: Any) -> Tensor:
        """x̃ of Algorithm 2 for z_t at student grid positions j [N] (t = p_j): two teacher DDIM steps, then the
        x̂ that one DDIM step from z_t needs to land where they did. [N, C, …] float, like z."""
        d = self.teacher_diffusion
        t, t1, t2 = (v.to(z.device)[j] for v in (self.t, self.t1, self.t2))
        x0 = self._teacher_x0(z, t, kw)
        z1 = ddim_step(d, x0, z, t, t1)
        x0_1 = self._teacher_x0(z1, t1, kw)
        z2 = ddim_step(d, x0_1, z1, t1, t2)
        a, s = _alpha_sigma(d, t, z)
        a2, s2 = _alpha_sigma(d, t2, z)
        x_tilde = (z2.double() - (s2 / s) * z.double()) / (a2 - (s2 / s) * a)
        return x_tilde.to(z.dtype)

    def _teacher_x0(self, z: Tensor, t: Tensor, kw: dict[str, Any]) -> Tensor:
        out = self.teacher(z, t, **kw)
        return self.teacher_diffusion.model_predictions(out, z, t, self.clip)[0]

    def weight(self, t: Tensor) -> Tensor:
        """w(λ_t) [N]: max(SNR_t, 1) or SNR_t + 1."""
        snr = self.student_diffusion.extract("snr", t, (t.shape[0],), torch.float64).reshape(-1)
        return snr.clamp(min=1.0) if self.weighting == "snr_trunc" else snr + 1.0

    def losses(self, student: ModelFn, x0: Tensor, noise: Tensor, j: Tensor, **kw: Any) -> Tensor:
        """Per-example w(λ_t)·mean‖x̃ − x̂_θ(z_t)‖² [N] for data x0 [N, C, …], ε ``noise`` like x0 and student
        grid positions j [N] (long, in [0, N)); z_t = α_t x₀ + σ_t ε at t = p_j."""
        t = self.t.to(x0.device)[j]
        z = self.student_diffusion.q_sample(x0, t, noise)
        target = self.target(z, j, **kw)
        x_hat = self.student_diffusion.model_predictions(student(z, t, **kw), z, t, clip_denoised=False)[0]
        err = (x_hat.to(target.dtype) - target) ** 2
        return self.weight(t).to(err.dtype) * err.reshape(err.shape[0], -1).mean(dim=1)

    def sample_positions(self, n: int, generator: torch.Generator, device: Any = None) -> Tensor:
        """j ~ U{0, …, N−1} [n] (Algorithm 2: t = i/N, i ~ Cat[1, …, N])."""
        return torch.randint(self.steps, (n,), generator=generator, device=device or generator.device)


def rounds(teacher_steps: int, steps: int) -> int:
    """How many halvings take ``teacher_steps`` to ``steps`` (a power of two apart), or ValueError."""
    r = math.log2(teacher_steps / steps) if teacher_steps > 0 and steps > 0 else -1.0
    if r < 1 or not float(r).is_integer():
        raise ValueError(
            f"the teacher's steps ({teacher_steps}) must be the student's ({steps}) times a power of two ≥ 2"
        )
    return int(r)


def _frozen(model: nn.Module | ModelFn) -> ModelFn:
    """A frozen copy of a module in eval mode (a plain callable, e.g. an exact oracle, as it is)."""
    if not isinstance(model, nn.Module):
        return model
    m = copy.deepcopy(model).eval()
    m.requires_grad_(False)
    return m
