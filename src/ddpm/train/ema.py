"""The exponential moving average of a model's weights that sampling and evaluation use."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class EMA:
    """Exponential moving average of a model's parameters (buffers are copied).

    θ_ema ← d·θ_ema + (1 − d)·θ with d_k = min(decay, (1 + k)/(10 + k)) when ``warmup`` (k = updates so far), so a
    short run is not stuck at its initial weights; the shadow model is what sampling and evaluation use.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        self.decay, self.warmup = float(decay), warmup
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.num_updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        k = self.num_updates
        return min(self.decay, (1 + k) / (10 + k))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_p: list[Tensor] = list(self.model.parameters())
        src_p: list[Tensor] = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        return self.model.state_dict()
