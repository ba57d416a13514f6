"""Optimizer parameter groups: weight decay on the weight matrices and kernels only."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["weight_decay_groups"]


def weight_decay_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimizer groups of ``module``'s trainable parameters: weights of ≥ 2 dimensions (conv kernels, linear
    matrices, embeddings) with ``weight_decay``, and biases / norm scales (1-D, or named ``*.bias``) without it —
    decaying a norm's gain or a bias only pulls the network towards a worse function. Frozen parameters are left
    out."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
