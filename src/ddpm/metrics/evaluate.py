"""The seed report's evaluation protocol for a trained run: FID/KID against the real images, a classifier's
confidence and class distribution over the generated images, the Inception Score when its weights file is given,
and the same measures across checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import list_checkpoints
from ..pipeline import LoadedModel, generate, load_model

__all__ = ["evaluate_model", "progressive_study", "score_images", "STUDY_KEYS"]

STUDY_KEYS = ("step", "val_loss", "fid", "kid", "mean_confidence", "entropy_normalized", "kl_uniform")


def _classifier_for(lm: LoadedModel, classifier: str | Path | None) -> Any:
    from .classifier import ClassifierError, load_classifier, load_default_classifier

    if classifier:
        return load_classifier(classifier)
    name = lm.config.data.name
    try:
        return load_default_classifier("cifar10" if "cifar" in name else name)
    except ClassifierError:
        return None


def evaluate_model(
    lm: LoadedModel,
    n: int = 1000,
    *,
    method: str | None = None,
    steps: int | None = -1,
    seed: int = 0,
    ref: str | Path | None = None,
    ref_split: str = "test",
    data_root: str | None = None,
    classifier: str | Path | None = None,
    fid: bool = True,
    extractor: Any = None,
    progress: bool = False,
    inception_weights: str | os.PathLike[str] | None = None,
    is_splits: int = 10,
) -> dict[str, Any]:
    """Sample ``n`` images from a loaded run and measure them.

    Returns ``n``, ``sample_seconds``, ``fid``/``kid``/``kid_std`` (against ``ref``: a dataset name, stats file or
    image folder; default the run's dataset, ``ref_split``) and the classifier report (``mean_confidence``,
    ``histogram``, ``entropy``, ``entropy_normalized``, ``kl_uniform``, …) when a classifier is available.
    With ``inception_weights`` (the Inception classifier's weights file, see :mod:`ddpm.metrics.isc`) and at least
    ``is_splits`` samples, also the Inception Score ``is_mean`` ± ``is_std`` over ``is_splits`` parts; otherwise
    ``is_skipped`` says why.
    """
    from .isc import WEIGHTS_ENV, WEIGHTS_FILENAME, InceptionClassifier, inception_score

    is_net, is_skipped = None, None
    if inception_weights is None:
        is_skipped = (
            f"no Inception classifier weights ({WEIGHTS_FILENAME}: --inception-weights or ${WEIGHTS_ENV})"
        )
    elif n < is_splits:
        is_skipped = f"{is_splits} splits need at least {is_splits} samples, got {n}"
    else:  # a bad weights file fails before the sampling
        is_net = InceptionClassifier(inception_weights)
    t0 = time.monotonic()
    images = generate(lm, n, method=method, steps=steps, seed=seed, progress=progress)
    out: dict[str, Any] = {"step": lm.step, "n": n, "sample_seconds": round(time.monotonic() - t0, 2)}
    clf = _classifier_for(lm, classifier)
    if clf is not None:
        from .classifier import sample_report

        out.update(sample_report(clf, images))
    else:
        out["classifier"] = "unavailable (train one: ddpm classifier train --dataset NAME)"
    if fid:
        root = data_root if data_root is not None else lm.config.data.root
        # Pass the image size only where it is not the dataset's default, so cached statistics are shared.
        size = lm.config.data.image_size
        if ref is None and _default_size(lm.config.data.name) == size:
            size = None
        scores = score_images(
            images, ref or lm.config.data.name, extractor, split=ref_split, root=root, image_size=size
        )
        out.update({k: scores[k] for k in ("fid", "kid", "kid_std") if k in scores})
        out["fid_reference"] = f"{ref or lm.config.data.name} ({ref_split}, {scores['ref_n']} images)"
    if is_net is not None:
        out["is_mean"], out["is_std"] = inception_score(images, splits=is_splits, classifier=is_net)
        out["is_splits"] = is_splits
    else:
        out["is_skipped"] = is_skipped
    return out


def score_images(
    images: Any,
    ref: Any,
    extractor: Any = None,
    *,
    split: str = "test",
    root: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    ref_n: int | None = None,
) -> dict[str, Any]:
    """FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018) of images against a reference.

    Args:
        images: uint8 images [N, C, H, W] (or anything :func:`ddpm.metrics.fid.compute_stats` takes).
        ref: a :class:`~ddpm.metrics.fid.FeatureStats`, a statistics ``.npz``, a folder/``.npz``/``.zip`` of
            images or a dataset name, resolved (and cached) by :func:`ddpm.metrics.fid.reference_stats` with
            ``split``, ``root``, ``image_size`` and ``ref_n`` (number of reference images; all when None).
        extractor: the :class:`~ddpm.metrics.fid.InceptionFeatures` to use (fp32 on CUDA/CPU when None).
    Returns:
        ``fid``; ``kid`` and ``kid_std`` when the reference carries its features (a statistics file written
        without them has none); ``n`` and ``ref_n``, the image counts on each side. FID is biased upward below
        ``MIN_RECOMMENDED_N`` images: compare only figures made with the same n.
    """
    from . import fid as fid_lib

    extractor = extractor or fid_lib.InceptionFeatures()
    if isinstance(ref, fid_lib.FeatureStats):
        ref_stats = ref
    else:
        ref_stats = fid_lib.reference_stats(
            ref,
            root=root,
            split=split,
            n=ref_n,
            image_size=image_size,
            extractor=extractor,
            keep_features=True,
        )
    fake = fid_lib.compute_stats(images, extractor, keep_features=True)
    out: dict[str, Any] = {"n": fake.n, "ref_n": ref_stats.n}
    out["fid"] = fid_lib.fid_from_stats(fake, ref_stats, warn=False)
    if ref_stats.features is not None and fake.features is not None:
        out["kid"], out["kid_std"] = fid_lib.kid(fake.features, ref_stats.features)
    return out


def _default_size(name: str) -> int | None:
    from ..data import DataError, dataset_info

    try:
        return dataset_info(name).image_size
    except DataError:
        return None


def _val_loss_by_step(run: Path) -> dict[int, float]:
    from .. import runlog

    return {int(r["step"]): float(r["val_loss"]) for r in runlog.read(run) if "val_loss" in r}


def progressive_study(
    run: str | Path,
    steps: Sequence[int] | None = None,
    every: int | None = None,
    n: int = 500,
    out_dir: str | Path | None = None,
    sample_steps: int | None = -1,
    extractor: Any = None,
    **eval_kw: Any,
) -> list[dict[str, Any]]:
    """Evaluate a run's checkpoints (all, every ``every`` steps, or the listed ``steps``) like the seed report's
    Table 4; writes ``study.md``, ``study.csv`` and ``study.png`` to ``out_dir`` (default: the run directory).
    ``extractor``: the FID network used for every checkpoint (default: an fp32 ``InceptionFeatures``)."""
    from ..viz import csv_table, markdown_table, plot_metric_table

    run = Path(run)
    ckpts = list_checkpoints(run / "checkpoints")
    if not ckpts:
        raise FileNotFoundError(f"no checkpoints in {run / 'checkpoints'}")
    by_step = {int(p.name.split("-")[1]): p for p in ckpts}
    chosen = sorted(by_step)
    if steps:
        missing = [s for s in steps if s not in by_step]
        if missing:
            raise ValueError(f"no checkpoint for step(s) {missing}; available: {chosen}")
        chosen = sorted(steps)
    elif every:
        chosen = [s for s in chosen if s % every == 0] or chosen[-1:]
    val = _val_loss_by_step(run)
    rows = []
    if extractor is None and eval_kw.get("fid", True):  # one network for every checkpoint
        from . import fid as fid_lib

        extractor = fid_lib.InceptionFeatures()
    for s in chosen:
        lm = load_model(by_step[s])
        r = evaluate_model(lm, n, steps=sample_steps, extractor=extractor, **eval_kw)
        r["val_loss"] = val.get(s, math.nan)
        rows.append(r)
    out = Path(out_dir) if out_dir else run
    out.mkdir(parents=True, exist_ok=True)
    keys = [k for k in STUDY_KEYS if any(k in r for r in rows)]
    (out / "study.md").write_text(markdown_table(rows, keys))
    (out / "study.csv").write_text(csv_table(rows, keys))
    (out / "study.jsonl").write_text("".join(json.dumps(_plain(r)) + "\n" for r in rows))
    plot_metric_table(rows, "step", [k for k in keys if k != "step"], out / "study.png", title=f"{run.name}")
    return rows


def _plain(r: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in r.items()}
