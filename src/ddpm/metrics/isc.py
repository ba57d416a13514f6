"""Inception Score (Salimans et al. 2016): the Inception-v3 classifier with its 1008-way head, loaded from a local
copy of the standard weights file, and the score computed from its logits.

    IS = exp( E_x KL( p(y|x) || p(y) ) ),   p(y) = E_x p(y|x)                         (Salimans et al. 2016, §4)

computed on ``splits`` (10) disjoint parts of the images, reported as the mean ± standard deviation over the parts.

The network is pytorch-fid's Inception-v3 (``pytorch_fid.inception.fid_inception_v3``: torchvision's ``Inception3``
with ``num_classes=1008, aux_logits=False`` and the TF-specific blocks ``FIDInceptionA/C/E_1/E_2``), the port of the
TensorFlow graph ``inception-2015-12-05`` that IS and FID are defined on. Its weights come only from a local file,
``pt_inception-2015-12-05-6726825d.pth`` (what pytorch-fid and torch-fidelity download; never downloaded here),
given as an argument or in ``$DDPM_INCEPTION_WEIGHTS``. It is loaded with ``weights_only=True`` and strictly.

Everything follows torch-fidelity (``torch_fidelity.metric_isc``, ``feature_extractor_inceptionv3``), the reference
implementation that reproduces the original TensorFlow code:

- preprocessing: uint8 RGB (grayscale repeated) resized to 299×299 with TF1's legacy bilinear resize (the same
  :func:`~ddpm.metrics.inception.nvidia_resize` the FID network uses; torch-fidelity's
  ``interpolate_bilinear_2d_like_tensorflow1x``), then ``(x - 128) / 128``. pytorch-fid's own ``InceptionV3``
  resizes with ``F.interpolate`` on [0, 1] instead, but pytorch-fid computes no IS; the original IS code fed the
  TF graph, whose resize is the legacy one, and torch-fidelity matches it.
- logits: all 1008 outputs, *without* the classifier's bias (torch-fidelity's ``logits_unbiased``; the original
  code multiplies ``pool_3`` by the weight matrix of ``softmax/logits`` and never adds its bias).
- score: float64 softmax; the images are first shuffled with ``numpy.random.RandomState(2020).permutation(N)``
  (torch-fidelity's default; ``shuffle=False`` keeps Salimans et al.'s order); part ``i`` holds rows
  ``i·N // splits`` to ``(i+1)·N // splits``; the standard deviation is the population one (``np.std``).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..threads import Threads, ThreadTuner, thread_scope, validate_threads
from .inception import _to_nchw_uint8, inception_input

__all__ = [
    "NUM_CLASSES",
    "SHUFFLE_SEED",
    "SPLITS",
    "WEIGHTS_ENV",
    "WEIGHTS_FILENAME",
    "WEIGHTS_URL",
    "InceptionClassifier",
    "InceptionWeightsError",
    "build_network",
    "inception_score",
    "inception_score_from_logits",
    "inception_score_from_probs",
    "load_network",
    "resolve_weights",
]

WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILENAME}"
WEIGHTS_ENV = "DDPM_INCEPTION_WEIGHTS"
NUM_CLASSES = 1008
SPLITS = 10
SHUFFLE_SEED = 2020  # torch-fidelity's isc_rng_seed

_HOW_TO_GET = (
    f"the Inception Score needs {WEIGHTS_FILENAME} (download it from {WEIGHTS_URL}); pass its path as "
    f"--inception-weights FILE (in Python: weights=) or in ${WEIGHTS_ENV}"
)


class InceptionWeightsError(ValueError):
    """The Inception classifier's weights file is not given, missing, unreadable or not the expected network.
    A ``ValueError``; the message is one line that says which file is needed and where to get it."""


# ----------------------------------------------------------------------------------------------------------
# The score


def inception_score_from_logits(
    logits: np.ndarray | torch.Tensor, splits: int = SPLITS, shuffle: bool = True, seed: int = SHUFFLE_SEED
) -> tuple[float, float]:
    """Inception Score of classifier logits: mean and standard deviation over ``splits`` parts.

    Args:
        logits: [N, K] unnormalised log-probabilities (``p(y|x) = softmax(logits)``); N ≥ ``splits``.
        splits: number of disjoint parts (10, as Salimans et al.).
        shuffle: permute the rows with ``RandomState(seed)`` first, as torch-fidelity does; False keeps the order.
        seed: the permutation's seed (torch-fidelity's 2020).
    Returns:
        ``(mean, std)`` of ``exp(mean_x KL(p(y|x) || p_part(y)))`` over the parts. It lies in [1, K].
    """
    x = _as_float64_2d(logits, "logits")
    if not torch.isfinite(x).all():
        raise ValueError("inception_score_from_logits: logits contain NaN or infinity")
    return _score(torch.log_softmax(x, dim=1), splits, shuffle, seed)


def inception_score_from_probs(
    probs: np.ndarray | torch.Tensor, splits: int = SPLITS, shuffle: bool = True, seed: int = SHUFFLE_SEED
) -> tuple[float, float]:
    """:func:`inception_score_from_logits` for class probabilities ``p(y|x)`` [N, K] (rows ≥ 0 summing to 1)."""
    p = _as_float64_2d(probs, "probs")
    if not torch.isfinite(p).all() or (p < 0).any() or not torch.allclose(p.sum(1), torch.ones_like(p[:, 0])):
        raise ValueError("inception_score_from_probs: every row must be finite, ≥ 0 and sum to 1")
    return _score(torch.log(p), splits, shuffle, seed)


def _as_float64_2d(values: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(values).detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must have shape [N, classes], got {tuple(x.shape)}")
    return x


def _score(log_p: torch.Tensor, splits: int, shuffle: bool, seed: int) -> tuple[float, float]:
    """log p(y|x) [N, K] (rows may hold -inf where p = 0) -> (mean, std) of the per-part scores."""
    n = log_p.shape[0]
    _check_splits(splits, n)
    if shuffle:
        log_p = log_p[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits : (i + 1) * n // splits]
        log_q = torch.logsumexp(part, dim=0) - math.log(len(part))  # log p_part(y) = log mean_x p(y|x)
        p = part.exp()
        kl = torch.where(p > 0, p * (part - log_q), torch.zeros_like(p)).sum(dim=1)  # 0·log 0 = 0
        scores.append(math.exp(float(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


def _check_splits(splits: int, n: int) -> None:
    if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
        raise ValueError(f"splits must be a positive integer, got {splits!r}")
    if n < splits:
        raise ValueError(f"the Inception Score in {splits} splits needs at least {splits} images, got {n}")


# ----------------------------------------------------------------------------------------------------------
# The network and its weights file


def resolve_weights(path: str | os.PathLike[str] | None = None) -> Path | None:
    """The weights file: ``path`` if given, else ``$DDPM_INCEPTION_WEIGHTS`` if set, else None (not checked)."""
    if path is not None and str(path) != "":
        return Path(path).expanduser()
    env = os.environ.get(WEIGHTS_ENV, "").strip()
    return Path(env).expanduser() if env else None


def build_network() -> nn.Module:
    """The Inception-v3 classifier of pytorch-fid with PyTorch's default (random) initialisation, in eval mode.

    ``torchvision.models.inception.Inception3(num_classes=1008, aux_logits=False, init_weights=False)`` with the
    blocks ``Mixed_5b…7c`` replaced as ``pytorch_fid.inception.fid_inception_v3`` does (average pools that ignore
    padding, as TensorFlow's; max pool in ``Mixed_7c``). Input float [N, 3, 299, 299] in [-1, 1]; ``net(x)`` is
    the 1008 logits with the bias.
    """
    try:
        from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2
        from torchvision.models.inception import Inception3
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"the Inception Score network needs pytorch-fid and torchvision ({e}): pip install 'ddpm[metrics]'"
        ) from e
    net = Inception3(num_classes=NUM_CLASSES, aux_logits=False, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net.eval().requires_grad_(False)


def load_network(path: str | os.PathLike[str]) -> nn.Module:
    """:func:`build_network` with the weights of ``path`` (``torch.load(weights_only=True)``, strict).

    Raises :class:`InceptionWeightsError` (one line) when the file is missing, cannot be read as a PyTorch state
    dict, or its keys, shapes or values do not fit the network. BatchNorm's ``num_batches_tracked`` counters, unused
    in evaluation and absent from files written by old PyTorch versions, may be missing.
    """
    path = Path(path)
    if not path.is_file():
        raise InceptionWeightsError(f"Inception weights {path}: no such file; {_HOW_TO_GET}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated, a foreign pickle: all are the same user error
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise InceptionWeightsError(
            f"Inception weights {path}: not a PyTorch weights file ({type(e).__name__}: {why}); {_HOW_TO_GET}"
        ) from e
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InceptionWeightsError(f"Inception weights {path}: not a state dict of tensors; {_HOW_TO_GET}")
    net = build_network()
    expected = net.state_dict()
    state = dict(state)
    for key, value in expected.items():  # optional counters: keep the network's own
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    problems = _mismatches(state, expected)
    if problems:
        raise InceptionWeightsError(
            f"Inception weights {path} do not fit the network: {problems}; {_HOW_TO_GET}"
        )
    net.load_state_dict(state, strict=True)
    if not all(torch.isfinite(v).all() for v in net.state_dict().values() if v.is_floating_point()):
        raise InceptionWeightsError(f"Inception weights {path} hold NaN or infinite values; {_HOW_TO_GET}")
    return net


def _mismatches(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str:
    """One line naming the missing and unexpected keys and the wrong shapes ('' when the state fits)."""

    def listed(what: str, items: list[str]) -> str:
        more = f" and {len(items) - 3} more" if len(items) > 3 else ""
        return f"{len(items)} {what} ({', '.join(items[:3])}{more})"

    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {list(state[k].shape)} instead of {list(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    parts = [
        listed(w, i) for w, i in (("missing", missing), ("unexpected", unexpected), ("shapes", shapes)) if i
    ]
    return "; ".join(parts)


class InceptionClassifier:
    """The 1008 Inception-v3 logits of uint8 images, as the Inception Score uses them (without the bias).

    Args:
        weights: the weights file (default ``$DDPM_INCEPTION_WEIGHTS``); :class:`InceptionWeightsError` without one.
        device: where the network runs (default: CUDA if available, else CPU).
        batch_size: images per forward pass.
        threads: torch's CPU threads — a number, ``"auto"`` (measured per batch by a
            :class:`~ddpm.threads.ThreadTuner` kept across calls) or None (as set).

    Call it with uint8 images — numpy or torch, ``[N, C, H, W]``, ``[N, H, W, C]`` or ``[N, H, W]`` with C = 1
    (repeated to RGB) or 3 — and get float64 numpy logits ``[N, 1008]``.
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 50,
        threads: Threads = "auto",
    ) -> None:
        validate_threads(threads)
        path = resolve_weights(weights)
        if path is None:
            raise InceptionWeightsError(f"no Inception weights file given: {_HOW_TO_GET}")
        self.weights = path
        self.threads = threads
        self._tuner: ThreadTuner | None = None
        self.device = torch.device(
            device if device is not None else "cuda" if torch.cuda.is_available() else "cpu"
        )
        self.batch_size = int(batch_size)
        net = load_network(path)
        self.fc_weight = cast(nn.Linear, net.fc).weight.detach().to(self.device)  # [1008, 2048]
        net.fc = nn.Identity()  # net(x) is now the 2048-d pool_3 features
        self.net = net.to(self.device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [n, C, H, W] -> float32 [n, 3, 299, 299]: TF1 legacy bilinear resize, then (x - 128) / 128."""
        return inception_input(images, self.device)

    @torch.inference_mode()
    def __call__(self, images: Any, layout: str = "auto") -> np.ndarray:
        """Logits without the bias of ``images`` (uint8, see the class docstring) -> float64 numpy [N, 1008]."""
        x = _to_nchw_uint8(images, layout)
        out = np.empty((x.shape[0], NUM_CLASSES), dtype=np.float64)
        if self.threads == "auto" and self._tuner is None and self.device.type == "cpu":
            self._tuner = ThreadTuner()
        with thread_scope(self.threads, self.device, self._tuner) as tuner:
            for i in range(0, x.shape[0], self.batch_size):
                batch = x[i : i + self.batch_size]
                unit = functools.partial(self._logits, batch)
                out[i : i + len(batch)] = tuner.run(unit, work=len(batch)) if tuner is not None else unit()
        return out

    def _logits(self, images: torch.Tensor) -> np.ndarray:
        """uint8 [n, C, H, W] -> float64 numpy [n, 1008]: pool_3 features times the classifier's weights."""
        feats = self.net(self.preprocess(images)).reshape(len(images), -1)
        return F.linear(feats, self.fc_weight).double().cpu().numpy()


def inception_score(
    images: Any,
    weights: str | os.PathLike[str] | None = None,
    *,
    splits: int = SPLITS,
    classifier: InceptionClassifier | None = None,
    shuffle: bool = True,
    seed: int = SHUFFLE_SEED,
) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits`` parts) of uint8 images [N, C, H, W] / [N, H, W, C] / [N, H, W].

    ``classifier`` (an :class:`InceptionClassifier`) is built from ``weights`` (default ``$DDPM_INCEPTION_WEIGHTS``)
    when None. Published figures use 50,000 images in 10 splits; fewer images give a lower, noisier score, so
    compare only figures made with the same number.
    """
    _check_splits(splits, len(images.images if hasattr(images, "images") else images))  # before the network
    classifier = classifier if classifier is not None else InceptionClassifier(weights)
    return inception_score_from_logits(classifier(images), splits=splits, shuffle=shuffle, seed=seed)
