"""How a classifier sees a set of (generated) images: the class histogram's entropy and KL to uniform
(:func:`histogram_stats`), the full report of confidences and histogram (:func:`sample_report`), and the same
report on uniform pixel noise (:func:`noise_baseline`), the floor to compare generated images with.

Reading the numbers: a model that drops classes shows a skewed histogram (low entropy, high KL to uniform);
recognisable images score a high mean max-softmax confidence. Like most ReLU-family CNNs, these classifiers are
*over*-confident far from the data (noise is typically put into a single class with high confidence), so judge
poor samples by the histogram as much as by mean confidence.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from .errors import ClassifierError
from .network import ClassifierConfig
from .prediction import predict_logits

__all__ = ["CONFIDENT", "histogram_stats", "noise_baseline", "sample_report"]

CONFIDENT = 0.9  # a prediction is "confident" when its max softmax probability exceeds this


def histogram_stats(counts: torch.Tensor | list[int]) -> dict[str, float]:
    """Entropy (nats), entropy / log K, and KL(p ‖ uniform) of a class histogram ``counts [K]``.

    With p = counts / Σ counts (0 · log 0 = 0): H = −Σ p log p, KL(p ‖ U) = Σ p log(K p) = log K − H.
    """
    c = torch.as_tensor(counts, dtype=torch.float64)
    k = int(c.numel())
    if k < 2 or float(c.sum()) <= 0:
        raise ClassifierError(f"need a histogram over >= 2 classes with a positive total, got {c.tolist()}")
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
        raise ClassifierError(
            f"sample_report needs at least one image (logits of shape {tuple(logits.shape)})"
        )
    k = int(logits.shape[1])
    if num_classes is not None and num_classes != k:
        raise ClassifierError(f"num_classes={num_classes} but the classifier outputs {k} logits")
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
    config = getattr(model, "config", None)
    if not isinstance(config, ClassifierConfig):
        raise ClassifierError("noise_baseline needs a Classifier (a model with a ClassifierConfig .config)")
    g = torch.Generator().manual_seed(seed)
    size = (n, config.in_channels, config.image_size, config.image_size)
    return sample_report(model, torch.randint(0, 256, size, generator=g, dtype=torch.uint8))
