"""Scoring images with a classifier: images in (validation, NCHW/NHWC layout, resizing to the network's size,
batching, bf16 autocast where it is fast, test-time flips) and logits out (:func:`predict_logits`), with the two
figures read straight off them: accuracy on labelled real data (:func:`evaluate_accuracy`) and, for a
class-conditional generator, how often the predicted class is the requested one (:func:`agreement`).

Every function takes any ``nn.Module`` mapping float ``[B, C, H, W]`` in [-1, 1] to logits ``[B, K]``; a
:class:`Classifier` additionally brings its ``config`` (channels, size, flips).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ClassifierError
from .network import ClassifierConfig

__all__ = ["agreement", "evaluate_accuracy", "predict_logits"]


def _as_nchw(images: Any, channels: int | None) -> torch.Tensor:
    """uint8 or float images as a tensor ``[N, C, H, W]``; NHWC (as in ``ddpm sample`` .npz) is transposed."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor or numpy array, got {type(images).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ClassifierError(f"images must be [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3) and (channels is None or x.shape[-1] == channels):
        x = x.permute(0, 3, 1, 2)
    return x


def _prepare(x: torch.Tensor, config: ClassifierConfig | None, device: torch.device) -> torch.Tensor:
    """A batch of uint8 (or float in [-1, 1]) images → float ``[B, C, S, S]`` in [-1, 1] on ``device``."""
    from ddpm.data import resize_images, to_float

    x = x.to(device)
    if config is not None:
        if x.shape[1] != config.in_channels:
            raise ClassifierError(
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


def agreement(model: nn.Module, images: Any, requested_labels: Any, batch_size: int = 500) -> float:
    """Share of ``images`` (uint8 ``[N, C, H, W]``) classified as the class they were generated for.

    ``requested_labels``: int ``[N]`` (tensor, array or list), the class each image was conditioned on.
    """
    labels = torch.as_tensor(np.asarray(requested_labels), dtype=torch.int64).reshape(-1)
    logits = predict_logits(model, images, batch_size)
    if labels.shape[0] != logits.shape[0]:
        raise ClassifierError(f"{logits.shape[0]} images but {labels.shape[0]} requested labels")
    if labels.numel() == 0:
        raise ClassifierError("agreement needs at least one image")
    return float((logits.argmax(1) == labels).double().mean())
