"""Training the evaluation classifier: per-preset defaults (:class:`TrainSettings`, :data:`TRAIN_PRESETS`),
per-dataset augmentation, the one-cycle learning-rate schedule, temperature scaling (:func:`fit_temperature`)
and the loop itself (:func:`train_classifier`).

SGD with Nesterov momentum, a triangular one-cycle learning rate, label smoothing, bf16 autocast where the
hardware has it, random crops and flips for CIFAR-10 and small random affine maps for digits; it stops after
``epochs`` or ``max_minutes``, whichever comes first, with the schedule following whichever is further along.
The temperature is fitted on held-out real images, so there the mean confidence tracks accuracy (stored as
``val_mean_confidence`` next to the accuracy: the reference a good generator should approach).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ...nn.params import weight_decay_groups
from .errors import ClassifierDivergedError, ClassifierError
from .network import PRESETS, Classifier, ClassifierConfig, _build
from .prediction import _bf16_ok, predict_logits
from .report import CONFIDENT, noise_baseline

__all__ = ["AUGMENTATIONS", "TRAIN_PRESETS", "TrainSettings", "fit_temperature", "train_classifier"]


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


def _random_affine(
    x: torch.Tensor, g: torch.Generator, rot_deg: float = 10.0, shift_px: float = 2.0
) -> torch.Tensor:
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
            raise ClassifierError(f"unknown classifier preset {preset!r}; choose one of {', '.join(PRESETS)}")
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
        raise ClassifierError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    if epochs is None and max_minutes is None:
        raise ClassifierError("train_classifier needs epochs or max_minutes (neither was given)")
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

    model.whiten.requires_grad_(False)  # the whitening stem is fixed by init_whitening
    opt = torch.optim.SGD(
        weight_decay_groups(model, wd),
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
            raise ClassifierDivergedError(
                f"classifier training diverged at step {step} (loss {float(loss.detach())}); the learning rate "
                f"lr={lr:g} is too high for this data"
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
