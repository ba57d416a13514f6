"""The classifier's own command line: ``python -m ddpm.metrics.classifier train|report`` (also reached as
``ddpm classifier train|report``).

:func:`main` parses the arguments, calls the library (:func:`train_classifier` + :func:`save_classifier`, or
:func:`sample_report`), and turns a user-caused failure into one ``error: …`` line on stderr and exit status 1
(``--debug`` re-raises). The hints that name this command's flags live here, not in the library's errors.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .errors import ClassifierNotFoundError
from .files import default_classifier_dir, load_classifier, load_default_classifier, save_classifier
from .network import PRESETS
from .report import sample_report
from .training import TRAIN_PRESETS, train_classifier

__all__ = ["PROG", "main"]

PROG = "python -m ddpm.metrics.classifier"
DESCRIPTION = (
    "A small, fast image classifier for judging generated samples (confidence and class distribution)."
)


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


def _parser() -> Any:
    import argparse

    ap = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
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
    return ap


def _train(args: Any) -> None:
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


def _report(args: Any) -> None:
    model = (
        load_classifier(args.classifier)
        if args.classifier
        else load_default_classifier(args.dataset or "cifar10")
    )
    with np.load(args.images) as f:
        x = f["x"] if "x" in f else f[f.files[0]]
    print(json.dumps(sample_report(model, x), indent=2))


def _message(e: BaseException) -> str:
    """The one line for a failure; a missing default classifier gets the command that trains it."""
    if isinstance(e, ClassifierNotFoundError) and e.dataset is not None:
        return (
            f"no {e.dataset} classifier in {e.directory}; train one with: {PROG} train --dataset {e.dataset}"
        )
    return " ".join(str(e).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``train`` or ``report`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    ``train``: train the ``--dataset`` preset (MNIST falls back to a seeded 8k/2k split of the 10k test digits
    where the 60k train split is absent) and save it to ``--out`` or the default directory. ``report``: print
    :func:`sample_report` of the images in ``--images`` (``.npz``, array ``x`` ``[N, H, W, C]``) as JSON.
    A failure prints one ``error: …`` line and returns 1 (``--debug`` re-raises); bad arguments exit 2.
    """
    args = _parser().parse_args(None if argv is None else list(argv))
    try:
        if args.cmd == "train":
            _train(args)
        else:
            _report(args)
    except (ValueError, OSError, KeyError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"error: {_message(e)}", file=sys.stderr)
        return 1
    return 0


#: The name ``ddpm.cli`` calls today; :func:`main` is the public one.
_main = main
