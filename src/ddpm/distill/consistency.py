"""Consistency distillation (Song et al. 2023, Algorithm 2): a student f_θ(x_t, t) that maps every point of a
probability-flow trajectory of the teacher to the same x₀, trained to agree with its target network θ⁻ (an EMA of
θ) one teacher ODE step earlier along the trajectory:

    n ~ U{0, …, N−2},  x_{t_{n+1}} = α x + σ ε,
    x̂_{t_n} = one DDIM step (η = 0: Euler on dy/dσ̃, y = x/α) of the teacher from t_{n+1} to t_n,
    L = λ(t_n) d(f_θ(x_{t_{n+1}}, t_{n+1}), f_θ⁻(x̂_{t_n}, t_n)),  θ⁻ ← μ θ⁻ + (1 − μ) θ,

on an N-point grid t_0 < … < t_{N−1} (EDM's ``karras`` grid by default, :func:`ddpm.sampling.timestep_grid`).
d is the squared L2 distance with λ = 1: LPIPS, the paper's best metric, needs a pretrained VGG that is not
available offline.

The skip/out parameterisation f = c_skip(σ̃) y + c_out(σ̃) F_θ (the paper's §3, from EDM) with σ_data = 1 and
ε = 0 is c_skip = 1/(1 + σ̃²) = α², c_out = −σ̃/√(1 + σ̃²) on y = x/α with F = v̂: exactly the x̂₀ of a
v-prediction network, x̂₀ = α x_t − σ v̂. So the student stays an ordinary v-prediction run that every sampler
reads; the boundary condition f(x, t_0) = x holds to within σ_{t_0} (≈ 0.01) rather than exactly, since the
grid starts at the forward process's first noise level, not at σ̃ = ε exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..diffusion import GaussianDiffusion
from ..sampling import timestep_grid
from .progressive import ddim_step

__all__ = ["ConsistencyDistillation"]

ModelFn = Callable[..., Tensor]


class ConsistencyDistillation:
    """The CD loss for a student against a fixed teacher and the target network θ⁻.

    Args:
        teacher: the frozen teacher ``model(x_t, t, **kw)``; ``teacher_diffusion`` reads its output.
        student_diffusion: how the student's (and θ⁻'s) output is read; f_θ is its x̂₀ (not clipped).
        target: θ⁻ — a module updated elsewhere (the run's EMA at decay μ).
        points: N, the grid's size; ``spacing``: the grid (see :func:`ddpm.sampling.timestep_grid`).
        clip: clip the teacher's x̂₀ to [−1, 1] in its ODE step, as its sampler does for images.
    """

    def __init__(
        self,
        teacher: nn.Module | ModelFn,
        teacher_diffusion: GaussianDiffusion,
        student_diffusion: GaussianDiffusion,
        target: nn.Module | ModelFn,
        points: int = 40,
        spacing: str = "karras",
        clip: bool = True,
    ) -> None:
        if points < 2:
            raise ValueError(f"the grid needs at least 2 points, got {points}")
        T = student_diffusion.num_timesteps
        if teacher_diffusion.num_timesteps != T:
            raise ValueError("the student and the teacher must share the number of timesteps")
        self.teacher, self.target_model = teacher, target
        self.teacher_diffusion, self.student_diffusion = teacher_diffusion, student_diffusion
        self.grid = torch.tensor(
            timestep_grid(T, points, spacing, student_diffusion.schedule), dtype=torch.long
        )
        self.clip = clip

    def consistency_fn(self, model: ModelFn, z: Tensor, t: Tensor, kw: dict[str, Any]) -> Tensor:
        """f(z, t) = x̂₀ of the student's diffusion from ``model``'s output (c_skip y + c_out F, see above)."""
        return self.student_diffusion.model_predictions(model(z, t, **kw), z, t, clip_denoised=False)[0]

    @torch.no_grad()
    def target(self, z: Tensor, n: Tensor, **kw: Any) -> Tensor:
        """f_θ⁻(x̂_{t_n}, t_n) for z at t_{n+1} [N] (n [N] long in [0, N − 1)): one teacher DDIM step, then θ⁻."""
        grid = self.grid.to(z.device)
        t_hi, t_lo = grid[n + 1], grid[n]
        out = self.teacher(z, t_hi, **kw)
        x0 = self.teacher_diffusion.model_predictions(out, z, t_hi, self.clip)[0]
        z_lo = ddim_step(self.teacher_diffusion, x0, z, t_hi, t_lo)
        return self.consistency_fn(self.target_model, z_lo, t_lo, kw)

    def losses(self, student: ModelFn, x0: Tensor, noise: Tensor, n: Tensor, **kw: Any) -> Tensor:
        """Per-example mean ‖f_θ(x_{t_{n+1}}) − f_θ⁻(x̂_{t_n})‖² [N] for data x0 [N, C, …] and ε ``noise``."""
        t_hi = self.grid.to(x0.device)[n + 1]
        z = self.student_diffusion.q_sample(x0, t_hi, noise)
        target = self.target(z, n, **kw)
        pred = self.consistency_fn(student, z, t_hi, kw)
        err = (pred.to(target.dtype) - target) ** 2
        return err.reshape(err.shape[0], -1).mean(dim=1)

    def sample_positions(self, n: int, generator: torch.Generator, device: Any = None) -> Tensor:
        """n ~ U{0, …, N − 2} [n]: the lower end of each pair of adjacent grid points."""
        return torch.randint(len(self.grid) - 1, (n,), generator=generator, device=device or generator.device)
