"""A classifier on disk: the directory format (``model.safetensors`` + ``classifier.json``), writing it
(:func:`save_classifier`), reading and checking it (:func:`load_classifier`), and where a dataset's default
classifier lives (:func:`default_classifier_dir`, :func:`load_default_classifier`).

``model.safetensors`` holds the fp32 weights and BN statistics (no pickle); ``classifier.json`` the architecture
config, dataset, class names, accuracy and how it was trained. The default place for a dataset's classifier is
``$DDPM_CACHE/classifiers/<dataset>/`` or ``~/.cache/ddpm/classifiers/<dataset>/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ClassifierError, ClassifierNotFoundError
from .network import Classifier, ClassifierConfig

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "default_classifier_dir",
    "load_classifier",
    "load_default_classifier",
    "save_classifier",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "classifier.json"
FORMAT = "ddpm-classifier"
FORMAT_VERSION = 1


def default_classifier_dir(dataset: str) -> Path:
    """Where a dataset's default classifier lives: ``$DDPM_CACHE/classifiers/<dataset>`` or
    ``~/.cache/ddpm/classifiers/<dataset>``."""
    from ...cache import cache_root

    base = cache_root()
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
    """``classifier.json``'s ``config`` object → :class:`ClassifierConfig`, every key and type checked."""
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
    missing (:class:`ClassifierNotFoundError`), corrupt or do not match each other.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(path_dir).expanduser()
    cfg_path, w_path = d / CONFIG_FILE, d / WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise ClassifierNotFoundError(
            f"no classifier in {d} (expected {CONFIG_FILE} and {WEIGHTS_FILE})", directory=d
        )
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
    """:func:`load_classifier` from :func:`default_classifier_dir` ``(dataset)``.

    Raises :class:`ClassifierNotFoundError` (with ``dataset`` and ``directory`` set, so a command line can
    say how to train one) when that directory holds no classifier.
    """
    d = default_classifier_dir(dataset)
    if not (d / CONFIG_FILE).is_file():
        raise ClassifierNotFoundError(
            f"no {dataset} classifier in {d}; train one (train_classifier) and save it there (save_classifier)",
            directory=d,
            dataset=dataset,
        )
    return load_classifier(d, device)
