"""A small, fast image classifier for judging generated samples (confidence and class distribution).

The investigation it serves: classify generated images with a classifier trained on the real data, then read
off the mean max-softmax confidence (recognisable images score high), the histogram of predicted classes
(a model that drops classes shows a skewed histogram: low entropy, high KL to uniform), and — for a
class-conditional model — how often the predicted class is the requested one (:func:`agreement`).

Network (:class:`Classifier`, after Keller Jordan's *airbench* and David Page's fast CIFAR-10 ResNets):

- a frozen 2×2 *patch-whitening* convolution (weights ±Σ^{-1/2} eigenvectors of the 2×2 patch covariance of
  the training images, set once by :meth:`Classifier.init_whitening`), then GELU;
- one block per entry of ``widths``: conv3×3 → max-pool 2 → BN → GELU → conv3×3 → BN → GELU;
- global max-pool → linear (no bias) → ×0.125.

Global pooling makes the network size-agnostic: it runs at 32×32, 28×28 and 16×16 (any size ≥ 9).
Input is float ``[N, C, H, W]`` in [-1, 1] (``ddpm.data.to_float`` of uint8 pixels); output logits ``[N, K]``.

Presets (:data:`PRESETS`): ``"mnist"`` (widths 32-64-128, ≈0.3 M parameters) and ``"cifar10"``
(64-128-256, ≈1.2 M parameters; scored with horizontal-flip test-time augmentation). Training
(:func:`train_classifier`) uses SGD with Nesterov momentum, a one-cycle (triangular) learning rate,
label smoothing, bf16 autocast where the hardware has it, and per-dataset augmentation (random crops and
flips for CIFAR-10, small random affine maps for digits); it stops after ``epochs`` or ``max_minutes``,
whichever comes first, with the schedule following whichever is further along.

Reading the numbers: ``temperature`` is fitted on held-out real images, so there the mean confidence
tracks accuracy (it is stored as ``val_mean_confidence`` next to the accuracy: the reference a good
generator should approach). Like most ReLU-family CNNs, these classifiers are *over*-confident far from
the data — uniform pixel noise is typically put into a single class with high confidence
(:func:`noise_baseline`, stored as ``noise_mean_confidence``) — so judge poor samples by the class
histogram (entropy, KL to uniform) as much as by mean confidence.

Files (:func:`save_classifier` / :func:`load_classifier`): ``model.safetensors`` (weights, no pickle) and
``classifier.json`` (architecture, dataset, class names, accuracy, how it was trained). The default place
for a dataset's classifier is :func:`default_classifier_dir`: ``$DDPM_CACHE/classifiers/<dataset>/`` or
``~/.cache/ddpm/classifiers/<dataset>/``.

Train the default classifiers once (MNIST falls back to a seeded 8k/2k split of the 10k test digits where
the 60k train split is absent)::

    python -m ddpm.metrics.classifier train --dataset mnist --max-minutes 3
    python -m ddpm.metrics.classifier train --dataset cifar10 --data-root cifar10-jpeg.zip --max-minutes 10
    python -m ddpm.metrics.classifier report --dataset cifar10 --images samples.npz
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "CONFIG_FILE",
    "PRESETS",
    "TRAIN_PRESETS",
    "WEIGHTS_FILE",
    "Classifier",
    "ClassifierConfig",
    "ClassifierError",
    "TrainSettings",
    "agreement",
    "default_classifier_dir",
    "evaluate_accuracy",
    "fit_temperature",
    "histogram_stats",
    "load_classifier",
    "load_default_classifier",
    "noise_baseline",
    "predict_logits",
    "sample_report",
    "save_classifier",
    "train_classifier",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "classifier.json"
FORMAT = "ddpm-classifier"
FORMAT_VERSION = 1
CONFIDENT = 0.9  # a prediction is "confident" when its max softmax probability exceeds this


class ClassifierError(ValueError):
    """A classifier file is missing, corrupt or does not match; the message is one line a user can act on."""


# ----------------------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of a :class:`Classifier` plus what it was trained on.

    Attributes:
        in_channels: C of the input ``[N, C, H, W]`` (1 or 3).
        num_classes: K, the number of logits.
        image_size: H (= W) the network was trained at; inputs of another size are resized (digits
            28 → 32 are zero-padded instead, as ``ddpm.data`` does).
        widths: output channels of the conv blocks; each block halves the resolution.
        whiten_kernel: side of the frozen patch-whitening convolution (its width is 2·C·k²).
        flip_tta: average the logits of the image and its mirror image when scoring (:func:`predict_logits`).
        temperature: logits are divided by this; :func:`train_classifier` fits it on the validation data
            (temperature scaling, Guo et al. 2017) so that softmax confidences are calibrated — label
            smoothing alone would cap them near 1 − ε.
        dataset: name of the training dataset (``"mnist"``, ``"cifar10"`` …).
        class_names: one name per class index (may be empty).
        preset: the preset this was made from (informational).
    """

    in_channels: int = 3
    num_classes: int = 10
    image_size: int = 32
    widths: tuple[int, ...] = (64, 128, 256)
    whiten_kernel: int = 2
    flip_tta: bool = False
    temperature: float = 1.0
    dataset: str = ""
    class_names: tuple[str, ...] = ()
    preset: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if self.in_channels < 1 or self.num_classes < 2 or self.image_size < 4:
            raise ValueError(
                f"ClassifierConfig needs in_channels >= 1, num_classes >= 2, image_size >= 4; got "
                f"{self.in_channels}, {self.num_classes}, {self.image_size}"
            )
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"ClassifierConfig: temperature must be positive, got {self.temperature}")
        if not self.widths or any(w < 1 for w in self.widths) or self.whiten_kernel < 1:
            raise ValueError(
                f"ClassifierConfig: bad widths {self.widths} / whiten_kernel {self.whiten_kernel}"
            )
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"ClassifierConfig: {len(self.class_names)} class names for {self.num_classes} classes"
            )

    @property
    def whiten_width(self) -> int:
        """Output channels of the whitening stem: ± each of the C·k² patch eigenvectors."""
        return 2 * self.in_channels * self.whiten_kernel**2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples → lists)."""
        d = dataclasses.asdict(self)
        d["widths"], d["class_names"] = list(self.widths), list(self.class_names)
        return d


#: Named architectures. ``train_classifier`` overrides channels / size / classes from the data.
PRESETS: dict[str, ClassifierConfig] = {
    "mnist": ClassifierConfig(in_channels=1, widths=(32, 64, 128), dataset="mnist", preset="mnist"),
    "cifar10": ClassifierConfig(
        in_channels=3, widths=(64, 128, 256), flip_tta=True, dataset="cifar10", preset="cifar10"
    ),
}


class _ConvBlock(nn.Module):
    """conv3×3 → max-pool 2 → BN → GELU → conv3×3 → BN → GELU: ``[N, Ci, H, W] → [N, Co, H//2, W//2]``."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class Classifier(nn.Module):
    """Small CNN classifier: float ``[N, C, H, W]`` in [-1, 1] → logits ``[N, K]``.

    ``H = W`` may be anything ≥ 9 (global pooling); the net is fastest and most accurate at
    ``config.image_size``. The functions of this module (:func:`predict_logits` …) take uint8 images and
    handle resizing, batching and test-time flips; ``forward`` is the bare network.
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.whiten = nn.Conv2d(config.in_channels, config.whiten_width, config.whiten_kernel, bias=True)
        blocks, c = [], config.whiten_width
        for w in config.widths:
            blocks.append(_ConvBlock(c, w))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, config.num_classes, bias=False)
        self.logit_scale = 0.125
        self.info: dict[str, Any] = {}  # accuracy, training details; written to classifier.json

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float ``[N, C, H, W]`` in [-1, 1] → logits ``[N, num_classes]`` (float)."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"Classifier expects [N, {self.config.in_channels}, H, W] input, got {tuple(x.shape)}"
            )
        h = F.gelu(self.whiten(x))
        h = self.blocks(h)
        h = torch.amax(h, dim=(2, 3))
        return self.head(h) * (self.logit_scale / self.config.temperature)

    @torch.no_grad()
    def init_whitening(self, x: torch.Tensor, eps: float = 1e-3) -> None:
        """Set the stem to whiten k×k patches of ``x`` (float ``[N, C, H, W]`` in [-1, 1]; ~5,000 suffice).

        Weights are ±E/√(λ + eps·mean λ) for the eigenpairs (λ, E) of the patch covariance; the bias
        subtracts the patch mean. Training keeps this layer frozen.
        """
        k = self.config.whiten_kernel
        patches = x.float().unfold(2, k, 1).unfold(3, k, 1)  # [N, C, H', W', k, k]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, self.config.in_channels * k * k).double()
        mean = patches.mean(0)
        centred = patches - mean
        cov = centred.T @ centred / max(1, centred.shape[0] - 1)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        eigvals, eigvecs = eigvals.flip(0).clamp_min(0), eigvecs.flip(1)
        scaled = eigvecs.T / torch.sqrt(eigvals + eps * eigvals.mean().clamp_min(1e-12)).unsqueeze(1)
        weight = torch.cat([scaled, -scaled])  # [2·C·k², C·k²]
        self.whiten.weight.copy_(weight.view_as(self.whiten.weight).to(self.whiten.weight))
        self.whiten.bias.copy_((-(weight @ mean)).to(self.whiten.bias))


def _build(config: ClassifierConfig, seed: int) -> Classifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Classifier(config)


# ----------------------------------------------------------------------------------------------------------
# Images in: validation, layout, resizing, batching
# ----------------------------------------------------------------------------------------------------------


def _as_nchw(images: Any, channels: int | None) -> torch.Tensor:
    """uint8 or float images as a tensor ``[N, C, H, W]``; NHWC (as in ``ddpm sample`` .npz) is transposed."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor or numpy array, got {type(images).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3) and (channels is None or x.shape[-1] == channels):
        x = x.permute(0, 3, 1, 2)
    return x


def _prepare(x: torch.Tensor, config: ClassifierConfig | None, device: torch.device) -> torch.Tensor:
    """A batch of uint8 (or float in [-1, 1]) images → float ``[B, C, S, S]`` in [-1, 1] on ``device``."""
    from ddpm.data import resize_images, to_float

    x = x.to(device)
    if config is not None:
        if x.shape[1] != config.in_channels:
            raise ValueError(
                f"the classifier expects {config.in_channels}-channel images, got {x.shape[1]} channels"
            )
        size, s = config.image_size, int(x.shape[-1])
        if x.shape[-2] != size or s != size:
            digits = config.dataset in ("mnist", "fashion-mnist")
            if digits and s == 28 and size == 32:  # ddpm.data's convention: 2 px of background per side
                x = F.pad(x, (2, 2, 2, 2), value=0 if x.dtype == torch.uint8 else -1.0)
            elif x.dtype == torch.uint8:
                x = resize_images(x.cpu(), size).to(device)
            else:
                x = F.interpolate(x.float(), size=(size, size), mode="bicubic", antialias=True).clamp(-1, 1)
    if x.dtype == torch.uint8:
        return to_float(x)
    if not x.is_floating_point():
        raise TypeError(f"images must be uint8 or float in [-1, 1], got {x.dtype}")
    return x.float()


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _bf16_ok(device: torch.device) -> bool:
    """Whether bf16 autocast is fast here (CUDA, or a CPU with AVX-512 BF16 / AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, c, lambda: False)()) for c in checks)
    return False


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: Any, batch_size: int = 500, autocast: bool | None = None
) -> torch.Tensor:
    """Logits of ``model`` for ``images``: uint8 ``[N, C, H, W]`` (or NHWC, or float in [-1, 1]) → float ``[N, K]`` (CPU).

    Images are resized to ``model.config.image_size`` where it differs, scored in eval mode in batches, with
    bf16 autocast where the hardware is fast at it (``autocast=None``), and averaged over a horizontal flip
    when ``model.config.flip_tta``. ``model`` may be any module mapping ``[B, C, H, W]`` to ``[B, K]``.
    """
    config: ClassifierConfig | None = getattr(model, "config", None)
    if not isinstance(config, ClassifierConfig):
        config = None
    x = _as_nchw(images, config.in_channels if config else None)
    device = _device_of(model)
    use_amp = _bf16_ok(device) if autocast is None else autocast
    flip = bool(config and config.flip_tta)
    was_training = model.training
    model.eval()
    out = []
    try:
        for chunk in x.split(batch_size):
            xb = _prepare(chunk, config, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(xb).float()
                if flip:
                    logits = 0.5 * (logits + model(xb.flip(-1)).float())
            out.append(logits.cpu())
    finally:
        model.train(was_training)
    if not out:
        k = config.num_classes if config else 0
        return torch.zeros(0, k)
    return torch.cat(out)


def evaluate_accuracy(model: nn.Module, data: Any, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (an ``ImageData``: uint8 ``images [N, C, H, W]``, ``labels [N]``)."""
    logits = predict_logits(model, data.images, batch_size)
    return float((logits.argmax(1) == data.labels.cpu()).double().mean()) if len(logits) else float("nan")


# ----------------------------------------------------------------------------------------------------------
# Reports on generated images
# ----------------------------------------------------------------------------------------------------------


def histogram_stats(counts: torch.Tensor | list[int]) -> dict[str, float]:
    """Entropy (nats), entropy / log K, and KL(p ‖ uniform) of a class histogram ``counts [K]``.

    With p = counts / Σ counts (0 · log 0 = 0): H = −Σ p log p, KL(p ‖ U) = Σ p log(K p) = log K − H.
    """
    c = torch.as_tensor(counts, dtype=torch.float64)
    k = int(c.numel())
    if k < 2 or float(c.sum()) <= 0:
        raise ValueError(f"need a histogram over >= 2 classes with a positive total, got {c.tolist()}")
    p = c / c.sum()
    h = float(-(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum()) + 0.0  # no -0.0
    return {"entropy": h, "entropy_normalized": h / math.log(k), "kl_uniform": max(0.0, math.log(k) - h)}


def sample_report(
    model: nn.Module, images: Any, num_classes: int | None = None, batch_size: int = 500
) -> dict[str, Any]:
    """How a classifier sees a set of (generated) images.

    Args:
        model: a classifier (any module mapping float ``[B, C, H, W]`` in [-1, 1] to logits ``[B, K]``).
        images: uint8 ``[N, C, H, W]`` (NHWC and float in [-1, 1] are accepted too).
        num_classes: K; defaults to the number of logits, and must equal it when given.

    Returns a dict:
        ``n``; ``num_classes``; ``mean_confidence`` (mean over images of the max softmax probability);
        ``confident_fraction`` (share with max probability > 0.9); ``histogram`` (predicted-class counts,
        list of K ints); ``class_fractions`` (the same / n); ``entropy`` (of the histogram, nats);
        ``entropy_normalized`` (entropy / log K: 1 = every class equally often, 0 = one class only);
        ``kl_uniform`` (KL(histogram ‖ uniform) = log K − entropy, nats); ``class_names`` where known.
    """
    logits = predict_logits(model, images, batch_size).double()
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"sample_report needs at least one image (logits of shape {tuple(logits.shape)})")
    k = int(logits.shape[1])
    if num_classes is not None and num_classes != k:
        raise ValueError(f"num_classes={num_classes} but the classifier outputs {k} logits")
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    counts = torch.bincount(pred, minlength=k)
    n = int(logits.shape[0])
    report: dict[str, Any] = {
        "n": n,
        "num_classes": k,
        "mean_confidence": float(conf.mean()),
        "confident_fraction": float((conf > CONFIDENT).double().mean()),
        "histogram": [int(c) for c in counts],
        "class_fractions": [int(c) / n for c in counts],
        **histogram_stats(counts),
    }
    config = getattr(model, "config", None)
    if isinstance(config, ClassifierConfig) and config.class_names:
        report["class_names"] = list(config.class_names)
    return report


def noise_baseline(model: nn.Module, n: int = 1000, seed: int = 0) -> dict[str, Any]:
    """:func:`sample_report` of ``n`` images of uniform uint8 noise (shape from ``model.config``).

    The floor to compare generated images with: a classifier that calls noise confident (common) makes
    mean confidence alone a weak signal; the histogram of noise usually collapses to one or two classes.
    """
    config = model.config
    g = torch.Generator().manual_seed(seed)
    size = (n, config.in_channels, config.image_size, config.image_size)
    return sample_report(model, torch.randint(0, 256, size, generator=g, dtype=torch.uint8))


def agreement(model: nn.Module, images: Any, requested_labels: Any, batch_size: int = 500) -> float:
    """Share of ``images`` (uint8 ``[N, C, H, W]``) classified as the class they were generated for.

    ``requested_labels``: int ``[N]`` (tensor, array or list), the class each image was conditioned on.
    """
    labels = torch.as_tensor(np.asarray(requested_labels), dtype=torch.int64).reshape(-1)
    logits = predict_logits(model, images, batch_size)
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{logits.shape[0]} images but {labels.shape[0]} requested labels")
    if labels.numel() == 0:
        raise ValueError("agreement needs at least one image")
    return float((logits.argmax(1) == labels).double().mean())


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """Training defaults of a preset (each overridable in :func:`train_classifier`).

    ``augment``: ``"crop-flip"`` (random translations of up to 4 px with reflected borders, and horizontal
    flips), ``"affine"`` (rotation ±10°, scale 0.9–1.1, shifts ±2 px; no flips: digits), or ``"none"``.
    """

    epochs: float = 10.0
    batch_size: int = 512
    lr: float = 0.4
    weight_decay: float = 5e-4
    label_smoothing: float = 0.2
    warmup: float = 0.2  # fraction of training spent raising the learning rate
    augment: str = "crop-flip"


TRAIN_PRESETS: dict[str, TrainSettings] = {
    "mnist": TrainSettings(epochs=8, batch_size=128, lr=0.2, label_smoothing=0.1, augment="affine"),
    "cifar10": TrainSettings(epochs=10, batch_size=256, lr=0.2, label_smoothing=0.2, augment="crop-flip"),
}

AUGMENTATIONS = ("crop-flip", "affine", "none")


def _default_augment(dataset: str) -> str | None:
    if dataset in ("mnist", "fashion-mnist", "digits"):
        return "affine"
    if dataset in ("cifar10", "folder"):
        return "crop-flip"
    if dataset == "gaussian-blobs":  # classes are positions: shifting or rotating would change them
        return "none"
    return None


def _random_translate(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Shift each image of float ``[B, C, H, W]`` by up to ``pad`` px each way, borders reflected."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    n = torch.arange(b, device=x.device)[:, None, None, None]
    ch = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[n, ch, rows, cols]


def _random_affine(x: torch.Tensor, g: torch.Generator, rot_deg: float = 10.0, shift_px: float = 2.0):
    """Small random rotation / scale / shift of float ``[B, C, H, W]`` in [-1, 1]; background (−1) fills in."""
    b, _, h, w = x.shape
    u = torch.rand(b, 4, generator=g, dtype=torch.float32).to(x.device) * 2 - 1
    angle = u[:, 0] * math.radians(rot_deg)
    scale = 1.0 + 0.1 * u[:, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    tx, ty = u[:, 2] * shift_px * 2 / w, u[:, 3] * shift_px * 2 / h
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


def _augment(x: torch.Tensor, kind: str, g: torch.Generator) -> torch.Tensor:
    if kind == "crop-flip":  # the flips themselves come from ddpm.data.Batches(flip=True)
        return _random_translate(x, max(1, round(x.shape[-1] / 8)), g)
    if kind == "affine":
        return _random_affine(x, g)
    return x


def _lr_factor(p: float, warmup: float) -> float:
    """Triangular one-cycle schedule at progress p ∈ [0, 1]: 0 → 1 over ``warmup``, then → 0 at p = 1."""
    if p < warmup:
        return p / warmup
    return max(0.0, (1.0 - p) / max(1e-8, 1.0 - warmup))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature T minimising the mean NLL of softmax(``logits`` / T) for ``labels`` (logits ``[N, K]``).

    NLL(β·z) is convex in β = 1/T, so a golden-section search over log β ∈ [log 0.01, log 100] finds it.
    """
    z, y = logits.double().cpu(), labels.cpu().long()

    def nll(log_beta: float) -> float:
        return float(F.cross_entropy(z * math.exp(log_beta), y))

    lo, hi = math.log(1e-2), math.log(1e2)
    r = (math.sqrt(5) - 1) / 2
    a, b = hi - r * (hi - lo), lo + r * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - r * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + r * (hi - lo)
            fb = nll(b)
    return float(math.exp(-0.5 * (lo + hi)))


def _resolve_config(preset: str | ClassifierConfig, data: Any) -> tuple[ClassifierConfig, TrainSettings]:
    if isinstance(preset, ClassifierConfig):
        base, settings = preset, TRAIN_PRESETS.get(preset.preset, TrainSettings())
    else:
        if preset not in PRESETS:
            raise ValueError(f"unknown classifier preset {preset!r}; choose one of {', '.join(PRESETS)}")
        base, settings = PRESETS[preset], TRAIN_PRESETS[preset]
    names = tuple(getattr(data, "class_names", ()) or ())
    num_classes = int(getattr(data, "num_classes", 0) or int(data.labels.max()) + 1)
    config = dataclasses.replace(
        base,
        in_channels=int(data.images.shape[1]),
        image_size=int(data.images.shape[-1]),
        num_classes=num_classes,
        dataset=str(getattr(data, "name", base.dataset)),
        class_names=names if len(names) == num_classes else (),
    )
    return config, settings


def train_classifier(
    data_train: Any,
    data_val: Any | None = None,
    preset: str | ClassifierConfig = "cifar10",
    *,
    epochs: float | None = None,
    max_minutes: float | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    augment: str | None = None,
    label_smoothing: float | None = None,
    weight_decay: float | None = None,
    device: str | torch.device | None = None,
    calibrate: bool = True,
    progress: bool | Callable[[dict[str, Any]], None] = False,
) -> tuple[Classifier, dict[str, Any]]:
    """Train a :class:`Classifier` on ``data_train`` and measure it on ``data_val``.

    Args:
        data_train, data_val: ``ddpm.data.ImageData`` (uint8 ``images [N, C, H, W]``, int64 ``labels [N]``,
            ``class_names``, ``name``). The network takes channels, size and classes from ``data_train``.
        preset: ``"mnist"`` / ``"cifar10"`` (architecture + training defaults, :data:`TRAIN_PRESETS`) or a
            :class:`ClassifierConfig`.
        epochs: passes over ``data_train`` (fractions allowed); default from the preset.
        max_minutes: wall-clock budget for the training loop; the learning-rate schedule follows whichever of
            epochs and time is further along, so a budgeted run still ends annealed.
        batch_size, lr, label_smoothing, weight_decay: SGD (Nesterov, momentum 0.9) settings; preset defaults.
        augment: ``"crop-flip"``, ``"affine"`` or ``"none"``; default chosen from the dataset name.
        seed: initialisation, data order and augmentation.
        device: default CUDA when available, else CPU. bf16 autocast where it is fast.
        calibrate: fit ``config.temperature`` on ``data_val`` (:func:`fit_temperature`; argmax and accuracy
            are unchanged) so that confidences on real images are calibrated.
        progress: True prints one line per epoch to stderr; a callable receives each epoch's metrics dict.

    Returns:
        ``(model, metrics)``: the model in eval mode (its ``info`` holds the metrics) and a dict with
        ``val_accuracy`` (None without ``data_val``), ``temperature``, ``val_nll`` (after calibration),
        ``val_mean_confidence`` / ``val_confident_fraction`` (the real-image reference for
        :func:`sample_report`'s figures), ``noise_mean_confidence`` / ``noise_entropy_normalized``
        (:func:`noise_baseline`), ``train_loss`` / ``train_accuracy`` (last epoch, on
        augmented data), ``epochs``, ``steps``, ``train_seconds``, ``eval_seconds``, ``images_per_second``,
        ``n_train``, ``n_val`` and the settings used.
    """
    from ddpm.data import Batches, dataset_info, to_float

    config, settings = _resolve_config(preset, data_train)
    epochs = settings.epochs if epochs is None and max_minutes is None else epochs
    batch_size = int(batch_size or settings.batch_size)
    batch_size = min(batch_size, len(data_train))
    lr = float(settings.lr if lr is None else lr)
    smoothing = float(settings.label_smoothing if label_smoothing is None else label_smoothing)
    wd = float(settings.weight_decay if weight_decay is None else weight_decay)
    if augment is None:
        augment = _default_augment(config.dataset) or settings.augment
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    if epochs is None and max_minutes is None:
        raise ValueError("give epochs or max_minutes")
    try:
        flip = augment == "crop-flip" and dataset_info(config.dataset).flip
    except ValueError:
        flip = augment == "crop-flip"
    if augment == "crop-flip" and not flip:
        config = dataclasses.replace(config, flip_tta=False)
    dev = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    use_amp = _bf16_ok(dev)

    t_start = time.perf_counter()
    model = _build(config, seed).to(dev)
    whiten_sample = data_train.images[
        torch.randperm(len(data_train), generator=torch.Generator().manual_seed(seed))[:5000]
    ]
    model.init_whitening(to_float(whiten_sample.to(dev)))
    model = model.to(memory_format=torch.channels_last)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if name.startswith("whiten."):
            p.requires_grad_(False)
        elif p.ndim > 1:
            decay.append(p)
        else:
            no_decay.append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        momentum=0.9,
        nesterov=True,
    )
    batches = Batches(data_train.to(dev), batch_size, seed=seed, flip=flip)
    steps_per_epoch = len(batches)
    total_steps = math.ceil(epochs * steps_per_epoch) if epochs is not None else None
    budget = max_minutes * 60.0 if max_minutes is not None else None
    g = torch.Generator().manual_seed(seed + 1)

    model.train()
    step, t0 = 0, time.perf_counter()
    ep_loss, ep_correct, ep_n, history = 0.0, 0, 0, []
    last: dict[str, Any] = {}

    def end_epoch(p: float) -> None:
        nonlocal ep_loss, ep_correct, ep_n, last
        last = {
            "epoch": step / steps_per_epoch,
            "progress": p,
            "train_loss": ep_loss / max(1, ep_n),
            "train_accuracy": ep_correct / max(1, ep_n),
            "seconds": time.perf_counter() - t0,
        }
        history.append(last)
        ep_loss, ep_correct, ep_n = 0.0, 0, 0
        if callable(progress):
            progress(dict(last))
        elif progress:
            print(
                f"[classifier] epoch {last['epoch']:.2f} ({100 * p:.0f}%) loss {last['train_loss']:.4f} "
                f"acc {last['train_accuracy']:.4f} {last['seconds']:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    p = 0.0
    while True:
        p = max(
            step / total_steps if total_steps else 0.0, (time.perf_counter() - t0) / budget if budget else 0.0
        )
        if p >= 1.0:
            break
        for group in opt.param_groups:
            group["lr"] = lr * _lr_factor(p, settings.warmup)
        x, y = next(batches)
        x = _augment(x, augment, g).contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"classifier training diverged at step {step} (loss {float(loss)}); lower lr"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        ep_loss += float(loss.detach()) * len(y)
        ep_correct += int((logits.argmax(1) == y).sum())
        ep_n += len(y)
        if step % steps_per_epoch == 0:
            end_epoch(p)
    if ep_n:
        end_epoch(min(1.0, p))
    train_seconds = time.perf_counter() - t0
    model = model.to(memory_format=torch.contiguous_format).eval()  # as load_classifier builds it
    for prm in model.parameters():
        prm.requires_grad_(True)

    t_eval = time.perf_counter()
    val: dict[str, Any] = {"val_accuracy": None}
    if data_val is not None and len(data_val):
        logits = predict_logits(model, data_val.images).double()  # at temperature 1
        labels = data_val.labels.cpu()
        val["val_accuracy"] = float((logits.argmax(1) == labels).double().mean())
        val["val_nll_uncalibrated"] = float(F.cross_entropy(logits, labels))
        if calibrate:
            model.config = dataclasses.replace(model.config, temperature=fit_temperature(logits, labels))
            logits = logits / model.config.temperature
        conf = logits.softmax(1).max(1).values
        val["val_nll"] = float(F.cross_entropy(logits, labels))
        val["val_mean_confidence"] = float(conf.mean())
        val["val_confident_fraction"] = float((conf > CONFIDENT).double().mean())
    noise = noise_baseline(model)
    val["noise_mean_confidence"] = noise["mean_confidence"]
    val["noise_entropy_normalized"] = noise["entropy_normalized"]
    eval_seconds = time.perf_counter() - t_eval
    metrics: dict[str, Any] = {
        **val,
        "temperature": model.config.temperature,
        "train_loss": last.get("train_loss"),
        "train_accuracy": last.get("train_accuracy"),
        "epochs": step / steps_per_epoch,
        "steps": step,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "total_seconds": time.perf_counter() - t_start,
        "images_per_second": step * batch_size / max(1e-9, train_seconds),
        "n_train": len(data_train),
        "n_val": len(data_val) if data_val is not None else 0,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": wd,
        "label_smoothing": smoothing,
        "augment": augment,
        "flip": flip,
        "bf16_autocast": use_amp,
        "device": str(dev),
        "seed": seed,
        "torch_threads": torch.get_num_threads(),
        "history": history,
    }
    model.info = {k: v for k, v in metrics.items() if k != "history"}
    return model, metrics


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------


def default_classifier_dir(dataset: str) -> Path:
    """Where a dataset's default classifier lives: ``$DDPM_CACHE/classifiers/<dataset>`` or
    ``~/.cache/ddpm/classifiers/<dataset>``."""
    root = os.environ.get("DDPM_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "ddpm"
    return base / "classifiers" / dataset


def save_classifier(
    model: Classifier, path_dir: str | os.PathLike[str], info: dict[str, Any] | None = None
) -> Path:
    """Write ``model.safetensors`` (fp32 weights and BN statistics) and ``classifier.json`` into ``path_dir``.

    ``classifier.json`` holds the architecture config, dataset, class names, image size / channels, the test
    accuracy and how it was measured (``model.info`` updated with ``info``). Files are written to temporary
    names and renamed, so an interrupted save never leaves a half-written pair. Returns the directory.
    """
    from safetensors.torch import save_file

    if not isinstance(model, Classifier):
        raise TypeError(f"save_classifier expects a Classifier, got {type(model).__name__}")
    out = Path(path_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    meta = {**model.info, **(info or {})}
    cfg = model.config
    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "dataset": cfg.dataset,
        "class_names": list(cfg.class_names),
        "num_classes": cfg.num_classes,
        "image_size": cfg.image_size,
        "channels": cfg.in_channels,
        "test_accuracy": meta.get("test_accuracy", meta.get("val_accuracy")),
        "config": cfg.to_dict(),
        "info": meta,
    }
    state = {
        k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    tmp_w, tmp_c = out / (WEIGHTS_FILE + ".tmp"), out / (CONFIG_FILE + ".tmp")
    save_file(state, str(tmp_w), metadata={"format": FORMAT, "dataset": cfg.dataset})
    tmp_c.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    os.chmod(tmp_w, tmp_c.stat().st_mode & 0o777)  # safetensors writes 0600; follow the umask like the JSON
    os.replace(tmp_w, out / WEIGHTS_FILE)
    os.replace(tmp_c, out / CONFIG_FILE)
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    if isinstance(o, (Path, torch.device, torch.dtype)):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _config_from_json(d: Any, where: Path) -> ClassifierConfig:
    if not isinstance(d, dict):
        raise ClassifierError(f"{where}: 'config' must be an object")
    fields = {f.name: f for f in dataclasses.fields(ClassifierConfig)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ClassifierError(f"{where}: unknown config keys {unknown} (written by a newer ddpm?)")
    expected: dict[str, tuple[type, ...]] = {
        "in_channels": (int,),
        "num_classes": (int,),
        "image_size": (int,),
        "whiten_kernel": (int,),
        "flip_tta": (bool,),
        "temperature": (float, int),
        "dataset": (str,),
        "preset": (str,),
        "widths": (list,),
        "class_names": (list,),
    }
    for key, value in d.items():
        types = expected[key]
        if not isinstance(value, types) or (types == (int,) and isinstance(value, bool)):
            raise ClassifierError(f"{where}: config.{key} has the wrong type ({type(value).__name__})")
    if not all(isinstance(w, int) and not isinstance(w, bool) for w in d.get("widths", [1])):
        raise ClassifierError(f"{where}: config.widths must be a list of integers")
    try:
        return ClassifierConfig(**d)
    except (TypeError, ValueError) as e:
        raise ClassifierError(f"{where}: invalid config: {e}") from e


def load_classifier(path_dir: str | os.PathLike[str], device: str | torch.device = "cpu") -> Classifier:
    """Load a classifier saved by :func:`save_classifier` (safetensors + JSON only; nothing is unpickled).

    Returns the model in eval mode on ``device``, with ``model.info`` (accuracy, training details) and
    ``model.config``. Raises :class:`ClassifierError` (a ``ValueError``) with one line when files are
    missing, corrupt or do not match each other.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(path_dir).expanduser()
    cfg_path, w_path = d / CONFIG_FILE, d / WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise ClassifierError(f"no classifier in {d} (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        doc = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClassifierError(
            f"{cfg_path}: not valid JSON ({' '.join(str(e).split())}); the file is corrupt"
        ) from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ClassifierError(f"{cfg_path}: not a ddpm classifier file (format != {FORMAT!r})")
    if not isinstance(doc.get("version"), int) or doc["version"] > FORMAT_VERSION:
        raise ClassifierError(
            f"{cfg_path}: unsupported version {doc.get('version')!r} (this ddpm reads <= {FORMAT_VERSION})"
        )
    config = _config_from_json(doc.get("config"), cfg_path)
    try:
        state = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ClassifierError(
            f"{w_path}: cannot read weights ({' '.join(str(e).split())}); the file is corrupt"
        ) from e
    model = Classifier(config)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [
            f"{len(x)} {what} (e.g. {x[0]})"
            for x, what in ((missing, "missing"), (unexpected, "unexpected"), (wrong, "wrong-shape"))
            if x
        ]
        raise ClassifierError(f"{w_path} does not match {CONFIG_FILE}: " + ", ".join(parts) + " tensors")
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise ClassifierError(f"{w_path}: weights contain NaN/inf; the file is corrupt")
    model.load_state_dict(state)
    info = doc.get("info")
    model.info = dict(info) if isinstance(info, dict) else {}
    if doc.get("test_accuracy") is not None:
        model.info.setdefault("test_accuracy", doc["test_accuracy"])
    return model.to(device).eval()


def load_default_classifier(dataset: str, device: str | torch.device = "cpu") -> Classifier:
    """:func:`load_classifier` from :func:`default_classifier_dir` ``(dataset)``, with a hint when absent."""
    d = default_classifier_dir(dataset)
    if not (d / CONFIG_FILE).is_file():
        raise ClassifierError(
            f"no {dataset} classifier in {d}; train one with: python -m ddpm.metrics.classifier train "
            f"--dataset {dataset}"
        )
    return load_classifier(d, device)


# ----------------------------------------------------------------------------------------------------------
# Command line: python -m ddpm.metrics.classifier train|report
# ----------------------------------------------------------------------------------------------------------


def _training_data(dataset: str, root: str | None, seed: int) -> tuple[Any, Any, str]:
    """(train, eval, description). MNIST without its train split: seeded 8k/2k split of the test digits."""
    import warnings

    from ddpm import data as D

    test = D.load(dataset, root=root, split="test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = D.load(dataset, root=root, split="train")
    if len(train) == len(test) and torch.equal(train.images, test.images):
        train, held_out = D.train_val_split(test, 0.2, seed)
        return (
            train,
            held_out,
            f"held-out {len(held_out)} of the {dataset} test split (trained on the other {len(train)}; no train split here)",
        )
    return (
        train,
        test,
        f"{dataset} test split ({len(test)} images; trained on the {len(train)}-image train split)",
    )


def _main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ddpm.metrics.classifier", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train a preset classifier and save it (default: the cache)")
    tr.add_argument("--dataset", required=True, choices=sorted(PRESETS))
    tr.add_argument("--data-root", default=None)
    tr.add_argument("--out", default=None, help="directory (default: default_classifier_dir(dataset))")
    tr.add_argument("--epochs", type=float, default=None)
    tr.add_argument("--max-minutes", type=float, default=None)
    tr.add_argument("--batch-size", type=int, default=None)
    tr.add_argument("--lr", type=float, default=None)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=None)
    rp = sub.add_parser("report", help="classifier report on generated images (.npz with 'x' [N, H, W, C])")
    rp.add_argument("--images", required=True)
    rp.add_argument("--dataset", default=None)
    rp.add_argument("--classifier", default=None, help="classifier directory (default: the cache)")
    rp.add_argument("--debug", action="store_true")
    tr.add_argument("--debug", action="store_true")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "train":
            if args.threads:
                torch.set_num_threads(args.threads)
            train, held_out, where = _training_data(args.dataset, args.data_root, args.seed)
            epochs = (
                args.epochs
                if args.epochs is not None
                else (None if args.max_minutes else TRAIN_PRESETS[args.dataset].epochs)
            )
            t = time.perf_counter()
            model, m = train_classifier(
                train,
                held_out,
                args.dataset,
                epochs=epochs,
                max_minutes=args.max_minutes,
                batch_size=args.batch_size,
                lr=args.lr,
                seed=args.seed,
                progress=True,
            )
            out = save_classifier(
                model,
                args.out or default_classifier_dir(args.dataset),
                {
                    "test_accuracy": m["val_accuracy"],
                    "evaluated_on": where,
                    "wall_seconds": time.perf_counter() - t,
                },
            )
            print(
                f"accuracy {m['val_accuracy']:.4f} on {where}; {m['epochs']:.2f} epochs in "
                f"{m['train_seconds']:.0f}s ({m['images_per_second']:.0f} img/s); saved to {out}"
            )
        else:
            model = (
                load_classifier(args.classifier)
                if args.classifier
                else load_default_classifier(args.dataset or "cifar10")
            )
            with np.load(args.images) as f:
                x = f["x"] if "x" in f else f[f.files[0]]
            print(json.dumps(sample_report(model, x), indent=2))
    except (ValueError, OSError, KeyError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
