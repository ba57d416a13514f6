"""``ddpm fid``, ``ddpm fid-ref``, ``ddpm is``, ``ddpm eval``, ``ddpm study`` and ``ddpm nll``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .. import runlog
from ..sampling import METHODS
from .args import (
    UserError,
    _add_common,
    _add_eval_options,
    _add_inception_options,
    _add_inception_weights,
    _add_model_source,
    _inception,
    _positive_int,
    _seed,
    _steps,
)

IS_PUBLISHED_N = 50_000  # Salimans et al. 2016 and the papers after them: 50k samples, 10 splits


def cmd_fid(args: argparse.Namespace) -> int:
    from ..metrics import fid as fid_lib
    from ..metrics.evaluate import score_images

    images = _images_for_metrics(args)
    extractor = _inception(args, device=args.device if args.device != "auto" else "cpu")
    ref: Any = fid_lib.FeatureStats.load(args.ref) if fid_lib.is_stats_file(args.ref) else args.ref
    r = score_images(images, ref, extractor, split=args.split, root=args.data_root, ref_n=args.ref_n)
    print(f"images: {r['n']} generated vs {r['ref_n']} reference")
    if r["n"] < fid_lib.MIN_RECOMMENDED_N:
        print(
            f"note: FID is biased upward below 10,000 images (n={r['n']}); compare only figures made with the same n"
        )
    if "kid" in r:
        print(f"KID {r['kid']:.6f} ± {r['kid_std']:.6f}")
    print(f"FID {r['fid']:.4f}")
    return 0


def cmd_is(args: argparse.Namespace) -> int:
    from ..metrics import isc

    device = None if args.device == "auto" else args.device
    classifier = isc.InceptionClassifier(
        args.inception_weights, device=device, batch_size=args.inception_batch
    )
    images = _images_for_metrics(args)
    n = len(images)
    mean, std = isc.inception_score(images, splits=args.splits, classifier=classifier)
    print(f"images: {n} in {args.splits} splits")
    if n < IS_PUBLISHED_N:
        print(
            f"note: the Inception Score is published for 50,000 images in 10 splits; fewer (n={n}) give a lower, "
            "noisier score: compare only figures made with the same n and splits"
        )
    print(f"IS {mean:.4f} ± {std:.4f}")
    return 0


def _images_for_metrics(args: argparse.Namespace) -> Any:
    from ..metrics import fid as fid_lib

    src = Path(args.images)
    if not src.exists():
        raise UserError(f"--images {src}: no such file or directory")
    if src.is_dir() and ((src / "checkpoints").is_dir() or (src / "meta.json").is_file()):
        from ..pipeline import generate, load_model

        lm = load_model(src, device=args.device)
        n = args.n or 1000
        print(
            f"sampling {n} images from {src} ({args.method or lm.config.sample.method}, "
            f"{args.steps if args.steps != -1 else lm.config.sample.steps} steps)",
            file=sys.stderr,
        )
        return generate(lm, n, method=args.method, steps=args.steps, seed=args.seed, progress=True)
    return fid_lib.load_images(src, n=args.n)


def cmd_fid_ref(args: argparse.Namespace) -> int:
    from ..metrics import fid as fid_lib

    extractor = _inception(args)
    stats = fid_lib.reference_stats(
        args.name,
        root=args.data_root,
        split=args.split,
        n=args.n,
        extractor=extractor,
        keep_features=bool(args.out),  # the written file carries them, for KID
    )
    if args.out:
        stats.save(args.out, features=True)
        print(f"wrote {args.out} ({stats.n} images)")
    else:
        print(f"cached reference statistics for {args.name} ({args.split}, {stats.n} images)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..metrics.evaluate import evaluate_model
    from ..metrics.isc import resolve_weights
    from ..pipeline import load_model

    lm = load_model(args.run, ema=not args.no_ema, device=args.device)
    r = evaluate_model(
        lm,
        args.n,
        method=args.method,
        steps=args.steps,
        seed=args.seed,
        ref=args.ref,
        ref_split=args.split,
        data_root=args.data_root,
        classifier=args.classifier,
        fid=not args.no_fid,
        extractor=_inception(args),
        progress=not args.no_progress,
        inception_weights=resolve_weights(args.inception_weights),
        is_splits=args.is_splits,
    )
    if runlog.has_log(args.run):
        runlog.append_event(args.run, "eval", r)
    print(f"step {r['step']}: {r['n']} samples in {r['sample_seconds']} s")
    if "mean_confidence" in r:
        print(
            f"classifier: mean confidence {r['mean_confidence']:.4f}, confident (>0.9) "
            f"{r['confident_fraction']:.3f}, class entropy {r['entropy_normalized']:.4f} of max, "
            f"KL from uniform {r['kl_uniform']:.4f} nats"
        )
        print(f"predicted classes: {r['histogram']}")
    else:
        print(f"classifier: {r['classifier']}")
    if "is_mean" in r:
        print(f"IS {r['is_mean']:.4f} ± {r['is_std']:.4f}  ({r['is_splits']} splits)")
    else:
        print(f"IS skipped: {r['is_skipped']}")
    if "kid" in r:
        print(f"KID {r['kid']:.6f} ± {r['kid_std']:.6f}")
    if "fid" in r:
        if r["n"] < 10_000:
            print(f"note: FID is biased upward below 10,000 images (n={r['n']})")
        print(f"FID {r['fid']:.4f}  (vs {r['fid_reference']})")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from ..metrics.evaluate import STUDY_KEYS, progressive_study
    from ..viz import markdown_table

    try:
        at = [int(v) for v in args.checkpoints.split(",")] if args.checkpoints else None
    except ValueError:
        raise UserError(f"--checkpoints must be comma-separated steps, got {args.checkpoints!r}") from None
    rows = progressive_study(
        args.run,
        steps=at,
        every=args.every,
        n=args.n,
        out_dir=args.out,
        method=args.method,
        sample_steps=args.steps,
        seed=args.seed,
        data_root=args.data_root,
        classifier=args.classifier,
        fid=not args.no_fid,
        extractor=_inception(args),
    )
    print(markdown_table(rows, [k for k in STUDY_KEYS if any(k in r for r in rows)]))
    print(f"wrote study.md, study.csv and study.png to {args.out or args.run}")
    return 0


def cmd_nll(args: argparse.Namespace) -> int:
    import torch

    from ..data import load
    from ..metrics.nll import nll_bpd
    from ..pipeline import load_model

    lm = load_model(args.run, ema=not args.no_ema, device=args.device)
    d = lm.config.data
    data = load(args.data or d.name, root=args.data_root or d.root, split=args.split, image_size=d.image_size)
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(data), generator=g)[: args.n]
    labels = data.labels[idx] if lm.config.model.num_classes is not None else None
    r = nll_bpd(
        lm.model,
        lm.diffusion,
        data.images[idx],
        batch_size=args.batch_size,
        seed=args.seed,
        labels=labels,
        progress=not args.no_progress,
    )
    print(
        f"{r['n']} {args.split} images: L_T {r['prior_bpd']:.4f} + Σ L_t {r['terms_bpd']:.4f} + "
        f"L_0 {r['decoder_bpd']:.4f}"
    )
    print(f"NLL ≤ {r['bpd']:.4f} ± {r['stderr']:.4f} bits/dim")
    return 0


def _nll_entry(args: argparse.Namespace) -> int:
    args.run = args.run or args.ckpt
    if not args.run:
        raise UserError("give --run RUN_DIR or --ckpt CHECKPOINT")
    return cmd_nll(args)


def register(sub: Any) -> None:
    """Add this module's sub-commands to the ``ddpm`` parser."""
    f = sub.add_parser("fid", help="FID and KID of images against a reference")
    f.add_argument(
        "--ref", required=True, help="dataset name, reference STATS.npz, or a folder/.npz/.zip of images"
    )
    f.add_argument(
        "--images", required=True, help="FILE.npz, a folder of images, or a run directory (samples --n)"
    )
    f.add_argument("--n", type=_positive_int, help="number of images to use (or to sample from a run)")
    f.add_argument("--ref-n", type=_positive_int, help="number of reference images (default: all)")
    f.add_argument("--data-root", help="where the reference dataset's files are")
    f.add_argument(
        "--split", default="test", choices=["train", "test"], help="reference split (default test)"
    )
    f.add_argument("--method", choices=sorted(METHODS))
    f.add_argument("--steps", type=_steps, default=-1)
    f.add_argument("--seed", type=_seed, default=0)
    f.add_argument("--device", default="auto")
    _add_inception_options(f)
    _add_common(f)
    f.set_defaults(func=cmd_fid)

    fr = sub.add_parser("fid-ref", help="compute and cache reference statistics of a dataset")
    fr.add_argument(
        "name", help="dataset name (mnist, cifar10, fashion-mnist, digits) or a folder/.zip of images"
    )
    fr.add_argument("--data-root")
    fr.add_argument("--split", default="test", choices=["train", "test"])
    fr.add_argument("--n", type=_positive_int)
    fr.add_argument("--out", help="also write the statistics (with features, for KID) to this .npz")
    _add_inception_options(fr)
    _add_common(fr)
    fr.set_defaults(func=cmd_fid_ref)

    i = sub.add_parser("is", help="Inception Score of images (needs the Inception classifier's weights file)")
    i.add_argument(
        "--images", required=True, help="FILE.npz, a folder of images, or a run directory (samples --n)"
    )
    i.add_argument("--n", type=_positive_int, help="number of images to use (or to sample from a run)")
    _add_inception_weights(i)
    i.add_argument("--splits", type=_positive_int, default=10, help="parts the score is averaged over (10)")
    i.add_argument("--inception-batch", type=_positive_int, default=50, help="images per Inception pass")
    i.add_argument("--method", choices=sorted(METHODS))
    i.add_argument("--steps", type=_steps, default=-1)
    i.add_argument("--seed", type=_seed, default=0)
    i.add_argument("--device", default="auto")
    _add_common(i)
    i.set_defaults(func=cmd_is)

    e = sub.add_parser(
        "eval",
        help="FID/KID, classifier confidence/class histogram (and IS with its weights) of a run's samples",
    )
    e.add_argument("run")
    _add_eval_options(e)
    _add_inception_weights(e)
    e.add_argument("--is-splits", type=_positive_int, default=10, help="Inception Score splits (10)")
    e.add_argument(
        "--ref", help="reference: dataset name, stats .npz or image folder (default: the run's dataset)"
    )
    e.add_argument("--no-ema", action="store_true")
    e.add_argument("--device", default="auto")
    e.add_argument("--no-progress", action="store_true")
    _add_common(e)
    e.set_defaults(func=cmd_eval)

    st = sub.add_parser(
        "study", help="evaluate a run's checkpoints: table + plot (the seed report's Table 4)"
    )
    st.add_argument("run")
    st.add_argument("--every", type=_positive_int, help="checkpoints whose step is a multiple of this")
    st.add_argument("--checkpoints", help="comma-separated checkpoint steps (default: all, or --every)")
    st.add_argument("--out", help="output directory (default: the run)")
    _add_eval_options(st)
    _add_common(st)
    st.set_defaults(func=cmd_study)

    nl = sub.add_parser("nll", help="negative log-likelihood bound in bits/dim on a test split")
    _add_model_source(nl)
    nl.add_argument("--data", help="dataset (default: the run's)")
    nl.add_argument("--data-root")
    nl.add_argument("--split", default="test", choices=["train", "test"])
    nl.add_argument("--n", type=_positive_int, default=100)
    nl.add_argument("--batch-size", type=_positive_int, default=50)
    nl.add_argument("--seed", type=_seed, default=0)
    nl.add_argument("--no-progress", action="store_true")
    _add_common(nl)
    nl.set_defaults(func=_nll_entry)
