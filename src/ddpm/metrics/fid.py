"""Fréchet Inception Distance (Heusel et al. 2017) and Kernel Inception Distance (Bińkowski et al. 2018) on
Inception features: streaming float64 feature statistics, the two distances, and statistics of image sets.

The feature network is :mod:`ddpm.metrics.inception`; reference statistics and their cache are
:mod:`ddpm.metrics.refstats` (both re-exported here under their old names).

FID is biased upward for small samples (the bias shrinks roughly like 1/n); figures below 10,000 images
are only comparable with figures made from the same n.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .inception import (
    FEATURE_DIM,
    INCEPTION_SIZE,
    PREPROCESSING,
    InceptionFeatures,
    _to_nchw_uint8,
    inception_path,
    nvidia_resize,
)

__all__ = [
    "FEATURE_DIM",
    "INCEPTION_SIZE",
    "MIN_RECOMMENDED_N",
    "PREPROCESSING",
    "FeatureStats",
    "InceptionFeatures",
    "SmallSampleWarning",
    "compute_stats",
    "fid_from_stats",
    "frechet_distance",
    "frechet_distance_low_rank",
    "inception_path",
    "is_stats_file",
    "kid",
    "nvidia_resize",
]

MIN_RECOMMENDED_N = 10_000


class SmallSampleWarning(UserWarning):
    """FID computed from fewer than :data:`MIN_RECOMMENDED_N` images (biased upward)."""


# ----------------------------------------------------------------------------------------------------------
# Statistics


class FeatureStats:
    """Streaming mean and covariance of feature vectors, in float64.

    Batches are merged with Chan et al.'s pairwise update of (count, mean, sum of squared deviations
    ``M2 = Σ (x - mean)(x - mean)ᵀ``), which is the running sum / sum of outer products without the
    cancellation of ``Σxxᵀ - n·μμᵀ``. The covariance is unbiased (``M2 / (n - 1)``, as
    ``np.cov(rowvar=False)``).

    Args:
        dim: feature dimension.
        keep_features: also keep the raw features (needed for KID).
        meta: free-form provenance, saved as JSON.
    """

    def __init__(self, dim: int = FEATURE_DIM, keep_features: bool = False, meta: dict | None = None) -> None:
        self.dim = int(dim)
        self.keep_features = bool(keep_features)
        self.meta: dict = dict(meta or {})
        self.n = 0
        self._mean = np.zeros(self.dim, dtype=np.float64)
        self._m2 = np.zeros((self.dim, self.dim), dtype=np.float64)
        self._chunks: list[np.ndarray] = []
        self._fixed_sigma: np.ndarray | None = None  # set when loaded from a file that lacks n

    def update(self, feats: np.ndarray | torch.Tensor) -> FeatureStats:
        """Add a batch of features [n, dim]; returns self."""
        self._check_mutable()
        if isinstance(feats, torch.Tensor):
            feats = feats.detach().cpu().numpy()
        x = np.asarray(feats, dtype=np.float64).reshape(-1, self.dim)
        nb = x.shape[0]
        if nb == 0:
            return self
        mean_b = x.mean(axis=0)
        d = x - mean_b
        self._merge(nb, mean_b, d.T @ d)
        if self.keep_features:
            self._chunks.append(x.copy())
        return self

    def _merge(self, nb: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        n = self.n + nb
        delta = mean_b - self._mean
        self._m2 += m2_b + np.outer(delta, delta) * (self.n * nb / n)
        self._mean += delta * (nb / n)
        self.n = n

    def _check_mutable(self) -> None:
        if self._fixed_sigma is not None:
            raise ValueError("statistics loaded without a sample count cannot be updated or merged")

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Fold another accumulator (e.g. from another process) into this one; returns self."""
        self._check_mutable()
        other._check_mutable()
        if other.dim != self.dim:
            raise ValueError(f"dimension mismatch: {self.dim} vs {other.dim}")
        if other.n:
            self._merge(other.n, other._mean.copy(), other._m2)
            if self.keep_features:
                if other.features is None:
                    raise ValueError("cannot merge stats without features into stats that keep them")
                self._chunks.append(other.features)
        return self

    @property
    def mu(self) -> np.ndarray:
        """Mean, float64 [dim]."""
        if self.n == 0 and self._fixed_sigma is None:
            raise ValueError("no features accumulated")
        return self._mean.copy()

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance, float64 [dim, dim] (needs n ≥ 2)."""
        if self._fixed_sigma is not None:
            return self._fixed_sigma.copy()
        if self.n < 2:
            raise ValueError(f"covariance needs at least 2 samples, have {self.n}")
        return self._m2 / (self.n - 1)

    @property
    def features(self) -> np.ndarray | None:
        """All features seen, float64 [n, dim], when ``keep_features`` (else None)."""
        if not self.keep_features:
            return None
        if len(self._chunks) != 1:
            self._chunks = [
                np.concatenate(self._chunks) if self._chunks else np.zeros((0, self.dim), np.float64)
            ]
        return self._chunks[0]

    def save(self, path: str | os.PathLike, features: bool | None = None) -> Path:
        """Write ``mu``, ``sigma``, ``n``, ``meta`` (JSON) and, if kept (or ``features=True``), ``features``.

        Features are stored as float32 when that is lossless (as it is for network outputs).
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "mu": self.mu,
            "sigma": self.sigma,
            "n": np.asarray(self.n, dtype=np.int64),
            "meta": np.asarray(json.dumps(self.meta, sort_keys=True)),
        }
        if features is None:
            features = self.keep_features
        if features:
            f = self.features
            if f is None:
                raise ValueError("these stats did not keep their features (keep_features=False)")
            f32 = f.astype(np.float32)
            arrays["features"] = f32 if np.array_equal(f32, f) else f
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stubs type **kwds as the allow_pickle flag
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """Read a file written by :meth:`save` (or any ``.npz`` with ``mu``, ``sigma``, optionally ``n``)."""
        with np.load(path, allow_pickle=False) as z:
            if "mu" not in z or "sigma" not in z:
                raise ValueError(
                    f"{path}: not a statistics file (needs 'mu' and 'sigma'; has {list(z.keys())})"
                )
            mu = np.asarray(z["mu"], dtype=np.float64)
            sigma = np.asarray(z["sigma"], dtype=np.float64)
            n = int(z["n"]) if "n" in z else 0
            meta = json.loads(str(z["meta"])) if "meta" in z else {}
            feats = np.asarray(z["features"], dtype=np.float64) if "features" in z else None
        stats = cls(dim=mu.shape[0], keep_features=feats is not None, meta=meta)
        stats.n = n
        stats._mean = mu
        if n >= 2:
            stats._m2 = sigma * (n - 1)
        else:  # foreign file without a count (e.g. pytorch-fid's): sigma is kept as is, read-only
            stats._fixed_sigma = sigma
        if feats is not None:
            stats._chunks = [feats]
        return stats

    def __repr__(self) -> str:
        return (
            f"FeatureStats(n={self.n}, dim={self.dim}, keep_features={self.keep_features}, meta={self.meta})"
        )


# ----------------------------------------------------------------------------------------------------------
# Distances


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ``‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2})``.

    Same numerics as pytorch-fid's ``calculate_frechet_distance`` (Dougal Sutherland's stable version):
    ``scipy.linalg.sqrtm`` of the product; if that is not finite, ``eps·I`` is added to both covariances;
    a small imaginary part from round-off is dropped, a large one (diagonal |imag| > 1e-3) raises.

    Args:
        mu1, mu2: means [d].
        sigma1, sigma2: covariances [d, d].
    """
    try:
        from scipy import linalg
    except ImportError as e:  # pragma: no cover - scipy is a metrics dependency
        raise ImportError("frechet_distance needs scipy: pip install 'ddpm[metrics]'") from e

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors have different shapes: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"covariance shapes {sigma1.shape}, {sigma2.shape} do not match mean {mu1.shape}")

    diff = mu1 - mu2
    with warnings.catch_warnings():
        # rank-deficient covariances (n < d) are common; scipy warns about them on every call
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            warnings.warn(
                f"FID: singular covariance product; adding {eps} to the diagonal of both covariances",
                RuntimeWarning,
                stacklevel=2,
            )
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm(sigma1 @ sigma2)"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_distance_low_rank(features: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet distance of :func:`frechet_distance` between the Gaussian fitted to ``features`` [n, d]
    (sample mean and unbiased covariance Σ1) and N(mu2, sigma2), exactly and fast when n ≤ d.

    With A the centred features, Σ1 = AᵀA/(n−1), so Σ1Σ2 has the nonzero eigenvalues of the n×n symmetric PSD
    matrix AΣ2Aᵀ/(n−1); and since Σ1Σ2 is similar to Σ1^{1/2}Σ2Σ1^{1/2}, tr (Σ1Σ2)^{1/2} is the sum of their
    square roots. An n×n ``eigvalsh`` replaces the d×d ``sqrtm`` (1,000 images against 2048-d statistics: a
    fraction of a second instead of many seconds), with no ε regularisation. It agrees with
    :func:`frechet_distance` to round-off; the published figures (``ddpm fid``) keep pytorch-fid's numerics.
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be [n >= 2, d], got shape {x.shape}")
    mu2, sigma2 = np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64)
    if mu2.shape != (x.shape[1],) or sigma2.shape != (x.shape[1],) * 2:
        raise ValueError(f"statistics of shape {mu2.shape}, {sigma2.shape} do not match features {x.shape}")
    n = x.shape[0]
    mu1 = x.mean(axis=0)
    a = x - mu1
    gram = a @ sigma2 @ a.T / (n - 1)
    eig = np.linalg.eigvalsh((gram + gram.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + (a * a).sum() / (n - 1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid_from_stats(a: FeatureStats, b: FeatureStats, warn: bool = True) -> float:
    """FID between two :class:`FeatureStats`; warns (:class:`SmallSampleWarning`) below 10k images."""
    if warn:
        known = [s.n for s in (a, b) if s._fixed_sigma is None]
        if known:
            _warn_small(min(known))
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def _warn_small(n: int) -> None:
    if n < MIN_RECOMMENDED_N:
        warnings.warn(
            f"FID from {n} < {MIN_RECOMMENDED_N} images is biased upward; compare only at equal n",
            SmallSampleWarning,
            stacklevel=3,
        )


def kid(
    feats1: np.ndarray,
    feats2: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with the polynomial kernel
    ``k(x, y) = (γ xᵀy + coef0)^degree`` (default γ = 1/d, i.e. ``(xᵀy/d + 1)³``), averaged over random
    subsets as torch-fidelity and clean-fid do.

    Each subset draws ``m = min(subset_size, n1, n2)`` rows from each set without replacement and computes
    ``Σ_{i≠j} k(x_i,x_j)/(m(m-1)) + Σ_{i≠j} k(y_i,y_j)/(m(m-1)) − 2 Σ_{i,j} k(x_i,y_j)/m²``.

    Args:
        feats1: features [n1, d]; feats2: features [n2, d].
    Returns:
        (mean, std) of the per-subset estimates (std is their spread, ddof=0, as torch-fidelity reports).
    """
    x_all = np.asarray(feats1, dtype=np.float64)
    y_all = np.asarray(feats2, dtype=np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(
            f"expected feature matrices [n, d] with equal d, got {x_all.shape} and {y_all.shape}"
        )
    m = min(subset_size, x_all.shape[0], y_all.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    d = x_all.shape[1]
    g = 1.0 / d if gamma is None else float(gamma)
    rng = np.random.default_rng(seed)
    estimates = np.empty(num_subsets, dtype=np.float64)
    for s in range(num_subsets):
        x = x_all[rng.choice(x_all.shape[0], m, replace=False)]
        y = y_all[rng.choice(y_all.shape[0], m, replace=False)]
        k_xx = (g * (x @ x.T) + coef0) ** degree
        k_yy = (g * (y @ y.T) + coef0) ** degree
        k_xy = (g * (x @ y.T) + coef0) ** degree
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        estimates[s] = within - 2.0 * k_xy.sum() / (m * m)
    return float(estimates.mean()), float(estimates.std())


# ----------------------------------------------------------------------------------------------------------
# Images in, statistics out


def _iter_batches(images: Any) -> Iterable[Any]:
    if hasattr(images, "images") and not isinstance(images, (np.ndarray, torch.Tensor)):
        images = images.images
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return [images]
    return images


def compute_stats(
    images: Any,
    extractor: InceptionFeatures | None = None,
    keep_features: bool = False,
    meta: dict | None = None,
    layout: str = "auto",
) -> FeatureStats:
    """Inception statistics of uint8 images.

    Args:
        images: one uint8 array/tensor ([N,C,H,W], [N,H,W,C] or [N,H,W]), an object with ``.images`` (such
            as ``ddpm.data.ImageData``), or an iterable of such batches (e.g. batches from a sampler), so
            that large sets stream through without being held in memory.
        extractor: an :class:`InceptionFeatures` (a CPU/CUDA fp32 one is built when None), or any callable
            mapping uint8 [N,C,H,W] to features [N, d] with ``fingerprint``, ``net_sha256`` and ``bf16``.
        keep_features: keep the raw features (for :func:`kid`).
        meta: provenance stored with the statistics; ``n``, ``image_size`` and ``fingerprint`` are filled in.
    Returns:
        :class:`FeatureStats` over all images.
    """
    extractor = extractor if extractor is not None else InceptionFeatures()
    stats = None
    size = None
    for batch in _iter_batches(images):
        x = _to_nchw_uint8(batch, layout)
        size = list(x.shape[1:])
        feats = extractor(x, layout="NCHW")
        if stats is None:
            stats = FeatureStats(feats.shape[1], keep_features=keep_features, meta=meta)
        stats.update(feats)
    if stats is None:
        raise ValueError("compute_stats: no images")
    stats.meta.update(
        n=stats.n,
        image_size=size,
        fingerprint=extractor.fingerprint,
        net_sha256=extractor.net_sha256,
        preprocessing=PREPROCESSING,
        dtype="bf16-autocast" if extractor.bf16 else "fp32",
    )
    return stats


def is_stats_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a statistics ``.npz`` (arrays ``mu`` and ``sigma``, as :meth:`FeatureStats.save`
    writes) rather than a ``.npz`` of images or anything else. A corrupt ``.npz`` raises as ``np.load`` does."""
    p = Path(path)
    if p.suffix != ".npz" or not p.is_file():
        return False
    with np.load(p, allow_pickle=False) as z:
        return "mu" in z.files and "sigma" in z.files


_npz_is_stats = is_stats_file  # the old private name


# The reference statistics live in refstats, which builds on this module, and the Inception Score in isc: their
# old names resolve lazily.
_REFSTATS = ("default_cache_dir", "fid_from_images", "load_images", "reference_stats")


def __getattr__(name: str) -> Any:
    if name in _REFSTATS:
        from . import refstats

        return getattr(refstats, name)
    if name == "inception_score":
        from .isc import inception_score

        return inception_score
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
