"""Negative log-likelihood in bits/dim: the variational bound of Ho et al. 2020 (eq. 5) over a test set.

L = L_T + Σ_{t>1} L_{t−1} + L_0, with L_0 the discretized Gaussian decoder (§3.3); every term is computed by
:meth:`ddpm.GaussianDiffusion.bits_per_dim` (T network evaluations per image). Works for fixed and learned
variances alike (Improved DDPM reports it for both).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..data import to_float
from ..diffusion import GaussianDiffusion

__all__ = ["nll_bpd"]


@torch.no_grad()
def nll_bpd(
    model: Callable[..., Tensor],
    diffusion: GaussianDiffusion,
    images: Tensor,
    batch_size: int = 64,
    seed: int = 0,
    labels: Tensor | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The bound in bits/dim for uint8 images [N, C, H, W] (or floats already in [−1, 1]).

    Returns ``bpd`` (mean over images), ``stderr`` (its standard error), ``prior_bpd`` (L_T), ``decoder_bpd``
    (L_0), ``terms_bpd`` (Σ_{t≥1} L_t), ``n`` and ``per_image`` [N].
    """
    x_all = to_float(images) if images.dtype == torch.uint8 else images.float()
    device = next(iter(getattr(model, "parameters", lambda: iter([torch.empty(0)]))()), torch.empty(0)).device
    g = torch.Generator(device).manual_seed(seed)
    per, prior, dec, terms = [], [], [], []
    batches = range(0, x_all.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="NLL (bits/dim)")
    for start in batches:
        x = x_all[start : start + batch_size].to(device)
        kw = {"y": labels[start : start + batch_size].to(device)} if labels is not None else None
        out = diffusion.bits_per_dim(model, x, model_kwargs=kw, generator=g)
        per.append(out["total_bpd"].cpu())
        prior.append(out["prior_bpd"].cpu())
        dec.append(out["vb"][:, 0].cpu())
        terms.append(out["vb"][:, 1:].sum(dim=1).cpu())
    per_image = torch.cat(per).double()
    n = per_image.numel()
    return {
        "bpd": float(per_image.mean()),
        "stderr": float(per_image.std() / math.sqrt(n)) if n > 1 else float("nan"),
        "prior_bpd": float(torch.cat(prior).mean()),
        "decoder_bpd": float(torch.cat(dec).mean()),
        "terms_bpd": float(torch.cat(terms).mean()),
        "n": n,
        "per_image": per_image,
    }
