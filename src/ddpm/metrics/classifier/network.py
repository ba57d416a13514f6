"""The evaluation classifier's network: its config (:class:`ClassifierConfig`), the named architectures
(:data:`PRESETS`) and the CNN itself (:class:`Classifier`, with its frozen patch-whitening stem).

After Keller Jordan's *airbench* and David Page's fast CIFAR-10 ResNets:

- a frozen 2×2 *patch-whitening* convolution (weights ±Σ^{-1/2} eigenvectors of the 2×2 patch covariance of
  the training images, set once by :meth:`Classifier.init_whitening`), then GELU;
- one block per entry of ``widths``: conv3×3 → max-pool 2 → BN → GELU → conv3×3 → BN → GELU;
- global max-pool → linear (no bias) → ×0.125.

Global pooling makes the network size-agnostic: it runs at 32×32, 28×28 and 16×16 (any size ≥ 9).
Input is float ``[N, C, H, W]`` in [-1, 1] (``ddpm.data.to_float`` of uint8 pixels); output logits ``[N, K]``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ClassifierError

__all__ = ["PRESETS", "Classifier", "ClassifierConfig"]


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

    Raises :class:`ClassifierError` (a ``ValueError``) for values no network can have.
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
            raise ClassifierError(
                f"ClassifierConfig needs in_channels >= 1, num_classes >= 2, image_size >= 4; got "
                f"{self.in_channels}, {self.num_classes}, {self.image_size}"
            )
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ClassifierError(f"ClassifierConfig: temperature must be positive, got {self.temperature}")
        if not self.widths or any(w < 1 for w in self.widths) or self.whiten_kernel < 1:
            raise ClassifierError(
                f"ClassifierConfig: bad widths {self.widths} / whiten_kernel {self.whiten_kernel}"
            )
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ClassifierError(
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


#: Named architectures: ``"mnist"`` (widths 32-64-128, ≈0.3 M parameters) and ``"cifar10"`` (64-128-256,
#: ≈1.2 M parameters; scored with horizontal-flip test-time augmentation). ``train_classifier`` overrides
#: channels / size / classes from the data.
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
    ``config.image_size``. The functions of ``ddpm.metrics.classifier`` (:func:`predict_logits` …) take uint8
    images and handle resizing, batching and test-time flips; ``forward`` is the bare network.
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
            raise ClassifierError(
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
        bias = self.whiten.bias
        assert bias is not None  # the stem is built with bias=True
        bias.copy_((-(weight @ mean)).to(bias))


def _build(config: ClassifierConfig, seed: int) -> Classifier:
    """A freshly initialised :class:`Classifier` from ``seed``, leaving the global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Classifier(config)
