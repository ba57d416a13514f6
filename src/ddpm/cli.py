"""The ``ddpm`` command: a thin layer over the library.

Every failure a user can cause ends in one line on stderr (``ddpm: error: …``) and a non-zero exit; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_BROKEN_PIPE = 128 + 13  # what a Unix tool killed by SIGPIPE returns (`ddpm … | head`)
# Fewest training steps after which the demo preset draws recognisable digits (measured: see the README).
DEMO_MIN_STEPS = 400


class UserError(Exception):
    """A failure caused by the user's input: reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        command = self.prog.partition(" ")[2]  # "ddpm train" → "train"; main adds the "ddpm: error:" prefix
        raise UserError(f"{command + ': ' if command else ''}{message} (see {self.prog} --help)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks")


# --------------------------------------------------------------------------- train
def _train_config(args: argparse.Namespace) -> Any:
    from .config import apply_overrides, config_from_dict
    from .recipes import get_recipe

    out = Path(args.out) if args.out else None
    if args.resume:
        if out is None:
            raise UserError("--resume needs --out RUN_DIR (the run to continue)")
        saved = out / "config.json"
        if not saved.is_file():
            raise UserError(f"nothing to resume: {saved} does not exist")
        try:
            cfg = config_from_dict(json.loads(saved.read_text()))
        except (json.JSONDecodeError, RecursionError) as e:
            raise UserError(f"{saved} is not valid JSON: {e}") from None
    else:
        if not args.preset:
            raise UserError("train needs --preset NAME (or --resume --out RUN_DIR)")
        cfg = get_recipe(args.preset)
    overrides = list(args.set or [])
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.max_minutes is not None:
        overrides.append(f"train.max_minutes={args.max_minutes}")
    return apply_overrides(cfg, overrides)


def _dry_run_config(cfg: Any) -> Any:
    """Resolve what the data would decide from the dataset's defaults, without reading any files."""
    from .data import dataset_info
    from .train import build_diffusion

    info = dataset_info(cfg.data.name)
    size = cfg.data.image_size or info.image_size or cfg.model.image_size
    c = info.channels or cfg.model.in_channels
    out_c = build_diffusion(cfg.diffusion).output_channels(c)
    model = replace(cfg.model, in_channels=c, out_channels=out_c, image_size=size)
    return replace(cfg, model=model, data=replace(cfg.data, image_size=size))


def cmd_train(args: argparse.Namespace) -> int:
    from .config import config_to_dict
    from .nn.unet import UNet
    from .train import Trainer

    cfg = _train_config(args)
    if args.dry_run:
        from .train import resolve_device, resolve_precision, validate_config

        validate_config(cfg)  # refuse what a real run would refuse
        resolve_precision(cfg.train.precision, resolve_device(cfg.train.device))
        cfg = _dry_run_config(cfg)
        import torch

        with torch.device("meta"):  # count parameters without allocating them
            n = sum(p.numel() for p in UNet(cfg.model).parameters())
        print(json.dumps(config_to_dict(cfg), indent=2))
        print(f"parameters: {n:,}")
        return 0
    if args.out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("under torchrun every rank must write to the same run: pass --out RUN_DIR")
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / f"{cfg.preset or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    trainer = Trainer(cfg, out, resume=args.resume, progress=not args.no_progress)
    main_rank = trainer.dist.is_main
    if main_rank:
        n = sum(p.numel() for p in trainer.model.parameters())
        print(
            f"training {cfg.preset or 'run'} ({n:,} parameters, {trainer.precision}, {trainer.device}) in {out}",
            file=sys.stderr,
        )
    summary = trainer.fit()
    if main_rank:
        print(
            f"stopped at step {summary['step']} ({summary['stop_reason']}); checkpoint: {summary['checkpoint']}"
        )
    return 0


# --------------------------------------------------------------------------- sample
def _labels(args: argparse.Namespace, n: int, num_classes: int | None) -> Any:
    import torch

    if args.class_label is None:
        return None
    if num_classes is None:
        raise UserError("--class needs a class-conditional model (trained with model.num_classes)")
    if args.class_label == "all":  # class by class: rows of a grid (n is rounded down to a multiple of K)
        per = max(1, n // num_classes)
        return torch.arange(num_classes).repeat_interleave(per)
    try:
        k = int(args.class_label)
    except ValueError:
        raise UserError(f"--class must be an integer or 'all', got {args.class_label!r}") from None
    if not 0 <= k < num_classes:
        raise UserError(f"--class {k} is out of range: the model has classes 0..{num_classes - 1}")
    return torch.full((n,), k, dtype=torch.long)


def _load(args: argparse.Namespace) -> Any:
    from .pipeline import load_model

    src = args.run or args.ckpt
    if not src:
        raise UserError("give --run RUN_DIR or --ckpt CHECKPOINT")
    return load_model(src, ema=not args.no_ema, device=args.device)


def cmd_sample(args: argparse.Namespace) -> int:
    from .pipeline import generate, save_images

    lm = _load(args)
    labels = _labels(args, args.n, lm.config.model.num_classes)
    out = Path(args.out) if args.out else (Path(args.run) if args.run else lm.path) / "samples.png"
    if out.suffix not in ("", ".npz", ".png"):
        raise UserError(f"--out must end in .npz or .png, or name a directory; got {out}")
    t0 = time.monotonic()
    images = generate(
        lm,
        len(labels) if labels is not None else args.n,
        method=args.method,
        steps=args.steps,
        eta=args.eta,
        seed=args.seed,
        batch_size=args.batch_size,
        labels=labels,
        guidance=args.guidance,
        precision=args.precision,
        progress=not args.no_progress,
        **({"spacing": args.spacing} if args.spacing else {}),
    )
    dt = time.monotonic() - t0
    if labels is not None and args.class_label == "all" and out.suffix == ".png":
        from .viz import class_grid

        path = class_grid(images, lm.config.model.num_classes, out)
    else:
        path = save_images(images, out, labels)
    print(f"wrote {len(images)} samples to {path} in {dt:.1f}s")
    return 0


# --------------------------------------------------------------------------- info
def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoint import list_checkpoints, load_checkpoint
    from .nn.unet import UNet
    from .viz import loss_stats, read_metrics

    run = Path(args.run)
    ck = load_checkpoint(run, with_state=False)
    cfg = ck.config
    n = sum(p.numel() for p in UNet(cfg.model).parameters())
    print(f"run:         {run}")
    print(
        f"preset:      {cfg.preset or '-'}  ({cfg.source})"
        if cfg.source
        else f"preset:      {cfg.preset or '-'}"
    )
    print(
        f"model:       {n:,} parameters, {cfg.model.in_channels}×{cfg.data.image_size}² images, "
        f"classes: {cfg.model.num_classes or '-'}"
    )
    d = cfg.diffusion
    print(
        f"diffusion:   {d.schedule} T={d.timesteps}, predicts {d.prediction}, variance {d.variance}, loss {d.loss}"
    )
    print(f"data:        {cfg.data.name} ({cfg.data.split})")
    ckpts = list_checkpoints(run / "checkpoints") if (run / "checkpoints").is_dir() else [ck.path]
    print(f"checkpoints: {', '.join(p.name for p in ckpts)}")
    records = read_metrics(run / "metrics.jsonl")
    for key in ("loss", "val_loss"):
        s = loss_stats(records, key)
        if s:
            print(
                f"{key + ':':<13}final {s['final']:.5f}, min {s['min']:.5f}, mean {s['mean']:.5f} ({s['n']} points)"
            )
    return 0


# --------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from .config import apply_overrides
    from .pipeline import generate, load_model, save_images
    from .recipes import get_recipe
    from .train import Trainer
    from .viz import forward_strip

    cfg = apply_overrides(get_recipe("demo"), args.set or [])
    out = Path(args.out)
    if (out / "checkpoints").exists():
        raise UserError(f"{out} already holds a run; pass another --out or remove it")
    t0 = time.monotonic()
    trainer = Trainer(cfg, out, progress=not args.no_progress)
    n = sum(p.numel() for p in trainer.model.parameters())
    print(
        f"demo: training a {n:,}-parameter U-Net on scikit-learn's {len(trainer.train_data)} real 8×8 digits "
        f"(upscaled to {trainer.config.data.image_size}×{trainer.config.data.image_size}) for at most "
        f"{cfg.train.max_minutes:g} minutes",
        file=sys.stderr,
    )
    summary = trainer.fit()
    strip = forward_strip(
        torch.stack([trainer.train_data.images[i] for i in range(4)]).float() / 127.5 - 1,
        trainer.diffusion,
        out / "forward_process.png",
    )
    lm = load_model(out)
    images = generate(lm, 64, seed=0, progress=False)
    grid = save_images(images, out / "samples.png")
    save_images(images, out / "samples.npz")
    dt = time.monotonic() - t0
    final = summary["train_loss"].get("final")  # the last finite logged loss
    loss = f"final loss {final:.4f}" if final is not None else "no finite training loss was logged"
    print(f"demo finished in {dt / 60:.1f} min ({summary['step']} steps, {loss})")
    if summary["step"] < DEMO_MIN_STEPS:
        print(
            f"warning: only {summary['step']} training steps ran (the demo needs about {DEMO_MIN_STEPS} to draw "
            f"digits), so these samples are mostly noise. The machine was probably busy: rerun it when it is "
            f"quieter, or give it more time: ddpm demo --out {out}-longer --set train.max_minutes="
            f"{math.ceil((cfg.train.max_minutes or 2.0) * DEMO_MIN_STEPS / max(summary['step'], 1))}"
        )
    print(f"  samples:         {grid}")
    print(f"  forward process: {strip}")
    print(f"  loss curve:      {out / 'loss_curve.png'}")
    print(f"  run directory:   {out}  (try: ddpm sample --run {out} --n 16 --out more.png)")
    return 0


# --------------------------------------------------------------------------- fid
def cmd_fid(args: argparse.Namespace) -> int:
    from .metrics import fid as fid_lib

    images = _images_for_metrics(args)
    extractor = _inception(args, device=args.device if args.device != "auto" else "cpu")
    fake = fid_lib.compute_stats(images, extractor, keep_features=True)
    ref = _reference(args, extractor)
    n = fake.n
    print(f"images: {n} generated vs {ref.n} reference")
    if n < 10_000:
        print(
            f"note: FID is biased upward below 10,000 images (n={n}); compare only figures made with the same n"
        )
    if ref.features is not None and fake.features is not None:
        k_mean, k_std = fid_lib.kid(fake.features, ref.features)
        print(f"KID {k_mean:.6f} ± {k_std:.6f}")
    value = fid_lib.fid_from_stats(fake, ref, warn=False)
    print(f"FID {value:.4f}")
    return 0


def _images_for_metrics(args: argparse.Namespace) -> Any:
    from .metrics import fid as fid_lib

    src = Path(args.images)
    if not src.exists():
        raise UserError(f"--images {src}: no such file or directory")
    if src.is_dir() and ((src / "checkpoints").is_dir() or (src / "meta.json").is_file()):
        from .pipeline import generate, load_model

        lm = load_model(src, device=args.device)
        n = args.n or 1000
        print(
            f"sampling {n} images from {src} ({args.method or lm.config.sample.method}, "
            f"{args.steps if args.steps != -1 else lm.config.sample.steps} steps)",
            file=sys.stderr,
        )
        return generate(lm, n, method=args.method, steps=args.steps, seed=args.seed, progress=True)
    return fid_lib.load_images(src, n=args.n)


def _reference(args: argparse.Namespace, extractor: Any) -> Any:
    from .metrics import fid as fid_lib

    ref = args.ref
    p = Path(ref)
    if p.suffix == ".npz" and p.is_file() and fid_lib._npz_is_stats(p):
        return fid_lib.FeatureStats.load(p)
    return fid_lib.reference_stats(
        ref, root=args.data_root, split=args.split, n=args.ref_n, extractor=extractor, keep_features=True
    )


def _inception(args: argparse.Namespace, device: str | None = None) -> Any:
    """The FID network as ``--inception-batch`` / ``--inception-precision`` ask (None under ``--no-fid``)."""
    if getattr(args, "no_fid", False):
        return None
    from .metrics import fid as fid_lib

    return fid_lib.InceptionFeatures(
        device=device, batch_size=args.inception_batch, bf16=args.inception_precision == "bf16"
    )


def cmd_fid_ref(args: argparse.Namespace) -> int:
    from .metrics import fid as fid_lib

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


# --------------------------------------------------------------------------- eval / study / nll
def cmd_eval(args: argparse.Namespace) -> int:
    from .metrics.evaluate import evaluate_model
    from .pipeline import load_model

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
    )
    run = Path(args.run)
    if (run / "metrics.jsonl").is_file():
        with open(run / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"event": "eval", **r}) + "\n")
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
    if "kid" in r:
        print(f"KID {r['kid']:.6f} ± {r['kid_std']:.6f}")
    if "fid" in r:
        if r["n"] < 10_000:
            print(f"note: FID is biased upward below 10,000 images (n={r['n']})")
        print(f"FID {r['fid']:.4f}  (vs {r['fid_reference']})")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from .metrics.evaluate import STUDY_KEYS, progressive_study
    from .viz import markdown_table

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

    from .data import load
    from .metrics.nll import nll_bpd
    from .pipeline import load_model

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


# --------------------------------------------------------------------------- viz
def cmd_viz(args: argparse.Namespace) -> int:
    import torch

    from . import viz
    from .schedule import NoiseSchedule

    out = Path(args.out)
    what = args.what
    if what == "schedules":
        viz.plot_alpha_bar({"linear": NoiseSchedule.linear(1000), "cosine": NoiseSchedule.cosine(1000)}, out)
    elif what == "losses":
        records = viz.read_metrics(Path(args.run or "") / "metrics.jsonl")
        if not records:
            raise UserError(f"no metrics.jsonl in {args.run}")
        viz.plot_losses(records, out)
    elif what == "forward":
        from .data import load, to_float
        from .train import build_diffusion

        if args.run:
            from .pipeline import load_model

            cfg = load_model(args.run).config
            data = load(cfg.data.name, root=cfg.data.root, split="test", image_size=cfg.data.image_size)
            diffusion = build_diffusion(cfg.diffusion)
        else:
            from .config import DiffusionConfig

            data = load(args.data or "digits", root=args.data_root, split="test")
            diffusion = build_diffusion(DiffusionConfig(schedule=args.schedule))
        viz.forward_strip(to_float(data.images[: args.n]), diffusion, out)
    else:
        from .pipeline import generate, load_model, model_fn

        if not args.run:
            raise UserError(f"viz {what} needs --run RUN_DIR")
        lm = load_model(args.run)
        if what in ("denoise", "gif"):
            ts = (
                viz.DENOISING_TIMESTEPS
                if what == "denoise"
                else tuple(range(lm.diffusion.num_timesteps - 1, -1, -25))
            )
            ts = tuple(t for t in ts if t < lm.diffusion.num_timesteps)
            method = args.method or "ddpm"
            steps = args.steps if args.steps != -1 else (None if method == "ddpm" else lm.config.sample.steps)
            g = torch.Generator().manual_seed(args.seed)
            from .sampling import sample

            x, frames = sample(
                model_fn(lm),
                lm.diffusion,
                (args.n, *lm.image_shape),
                method=method,
                steps=steps,
                generator=g,
                intermediates=ts,
            )
            if what == "denoise":
                viz.denoising_strip(frames, x, out, ts)
            else:
                viz.denoising_gif(frames, out)
        elif what == "grid":
            viz.save_grid(generate(lm, args.n, method=args.method, steps=args.steps, seed=args.seed), out)
        elif what == "real-vs-generated":
            from .data import load

            d = lm.config.data
            real = load(d.name, root=args.data_root or d.root, split="test", image_size=d.image_size)
            fake = generate(lm, args.n, method=args.method, steps=args.steps, seed=args.seed)
            viz.real_vs_generated(real.images[: args.n], fake, out, n=args.n)
        elif what == "classes":
            k = lm.config.model.num_classes
            if k is None:
                raise UserError("viz classes needs a class-conditional model")
            per = max(1, args.n // k)
            labels = torch.arange(k).repeat_interleave(per)
            x = generate(
                lm,
                len(labels),
                method=args.method,
                steps=args.steps,
                seed=args.seed,
                labels=labels,
                guidance=args.guidance,
            )
            viz.class_grid(x, k, out)
    print(f"wrote {out}")
    return 0


def cmd_classifier(args: argparse.Namespace) -> int:
    from .metrics.classifier import _main

    return _main(args.rest)


# --------------------------------------------------------------------------- convert
def cmd_convert(args: argparse.Namespace) -> int:
    from .interop.diffusers import export_diffusers, import_diffusers

    if bool(args.from_diffusers) == bool(args.to_diffusers):
        raise UserError("give exactly one of --from-diffusers DIR or --to-diffusers RUN_DIR")
    if args.from_diffusers:
        ckpt = import_diffusers(args.from_diffusers, args.out)
        print(
            f"imported {args.from_diffusers} as run {args.out} ({ckpt.name}); try: ddpm sample --run {args.out}"
        )
    else:
        out = export_diffusers(args.to_diffusers, args.out, ema=not args.no_ema)
        print(f"exported {args.to_diffusers} to {out} (diffusers.DDPMPipeline.from_pretrained loads it)")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from .sampling import METHODS

    p = _Parser(prog="ddpm", description="Denoising Diffusion Probabilistic Models: train, sample, evaluate.")
    p.add_argument("--version", action="version", version=f"ddpm {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model from a preset")
    t.add_argument("--preset", help="named configuration (see `ddpm presets`)")
    t.add_argument("--data-root", help="directory (or .zip) holding the dataset files")
    t.add_argument("--out", help="run directory (default runs/PRESET-TIME)")
    t.add_argument(
        "--set",
        action="extend",
        nargs="+",
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set train.lr=1e-4 train.ema_decay=0.999 (repeatable)",
    )
    t.add_argument("--max-steps", type=_positive_int)
    t.add_argument("--max-minutes", type=float)
    t.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its newest checkpoint"
    )
    t.add_argument(
        "--dry-run", action="store_true", help="print the resolved config and parameter count, then exit"
    )
    t.add_argument("--no-progress", action="store_true")
    _add_common(t)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate images from a trained run")
    _add_model_source(s)
    s.add_argument("--n", type=_positive_int, default=64)
    s.add_argument("--method", choices=sorted(METHODS))
    s.add_argument(
        "--steps", type=_steps, default=-1, help="sampling steps (default: the run's; 'all' for T)"
    )
    s.add_argument("--eta", type=_nonnegative_float, help="DDIM η (0: deterministic)")
    s.add_argument(
        "--spacing", help="timestep grid: linspace, leading, trailing, quadratic, logsnr, logsnr_soft, karras"
    )
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument("--batch-size", type=_positive_int)
    s.add_argument("--class", dest="class_label", help="class index (or 'all': cycle through the classes)")
    s.add_argument("--guidance", type=_finite_float, help="classifier-free guidance scale w (0: conditional)")
    s.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="network precision (default: the run's train.precision; auto = bf16 where the hardware has it)",
    )
    s.add_argument(
        "--out", help="FILE.npz (uint8 [N,H,W,C] under 'x'), FILE.png (grid) or a directory of PNGs"
    )
    s.add_argument("--no-progress", action="store_true")
    _add_common(s)
    s.set_defaults(func=cmd_sample)

    d = sub.add_parser("demo", help="train on bundled digits, sample, and draw figures (a few CPU-minutes)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE")
    d.add_argument("--no-progress", action="store_true")
    _add_common(d)
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("info", help="describe a run or checkpoint")
    i.add_argument("run")
    _add_common(i)
    i.set_defaults(func=cmd_info)

    pr = sub.add_parser("presets", help="list the training presets")
    _add_common(pr)
    pr.set_defaults(func=cmd_presets)

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

    e = sub.add_parser("eval", help="FID/KID and classifier confidence/class histogram of a run's samples")
    e.add_argument("run")
    _add_eval_options(e)
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

    v = sub.add_parser(
        "viz", help="figures: forward, denoise, gif, grid, real-vs-generated, classes, schedules, losses"
    )
    v.add_argument(
        "what",
        choices=["forward", "denoise", "gif", "grid", "real-vs-generated", "classes", "schedules", "losses"],
    )
    v.add_argument("--run")
    v.add_argument("--out", required=True, help="PNG (GIF for 'gif') to write")
    v.add_argument("--n", type=_positive_int, default=8)
    v.add_argument("--data", help="dataset for 'forward' without --run (default: digits)")
    v.add_argument("--data-root")
    v.add_argument("--schedule", default="linear", choices=["linear", "cosine"])
    v.add_argument("--method", choices=sorted(METHODS))
    v.add_argument("--steps", type=_steps, default=-1)
    v.add_argument("--guidance", type=_finite_float)
    v.add_argument("--seed", type=_seed, default=0)
    _add_common(v)
    v.set_defaults(func=cmd_viz)

    cv = sub.add_parser("convert", help="import/export diffusers UNet2DModel + DDPMScheduler folders")
    cv.add_argument(
        "--from-diffusers", metavar="DIR", help="folder with unet/ and scheduler/ as diffusers saves them"
    )
    cv.add_argument("--to-diffusers", metavar="RUN_DIR", help="run directory or checkpoint to export")
    cv.add_argument("--out", required=True, help="run directory (import) or folder (export) to write")
    cv.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    _add_common(cv)
    cv.set_defaults(func=cmd_convert)

    c = sub.add_parser(
        "classifier", help="train or apply the evaluation classifier (train|report ...)", add_help=False
    )
    c.add_argument("rest", nargs=argparse.REMAINDER)
    c.set_defaults(func=cmd_classifier)
    return p


def cmd_presets(args: argparse.Namespace) -> int:
    from .recipes import RECIPES, recipe_names

    for name in recipe_names():
        print(f"{name:<24} {RECIPES[name].__doc__ or ''}")
    return 0


def _nll_entry(args: argparse.Namespace) -> int:
    args.run = args.run or args.ckpt
    if not args.run:
        raise UserError("give --run RUN_DIR or --ckpt CHECKPOINT")
    return cmd_nll(args)


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    from .sampling import METHODS

    p.add_argument("--n", type=_positive_int, default=1000, help="samples per evaluation")
    p.add_argument("--method", choices=sorted(METHODS))
    p.add_argument("--steps", type=_steps, default=-1)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--split", default="test", choices=["train", "test"], help="reference split for FID")
    p.add_argument("--data-root")
    p.add_argument("--classifier", help="classifier directory (default: the cached one for the dataset)")
    p.add_argument("--no-fid", action="store_true")
    _add_inception_options(p)


def _add_inception_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inception-batch", type=_positive_int, default=100, help="images per Inception pass")
    p.add_argument(
        "--inception-precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="bf16 autocast: ~1.7x faster on a CPU with bf16 units; figures move slightly (cached apart)",
    )


def _add_model_source(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--run", help="run directory (its newest checkpoint)")
    g.add_argument("--ckpt", help="checkpoint directory (or a file in it)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto")


def _int_in(value: str, lo: int, hi: int | None, what: str) -> int:
    """``int(value)`` within [lo, hi) for argparse, or an ``ArgumentTypeError`` saying what was expected."""
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
    if v < lo or (hi is not None and v >= hi):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
    return v


def _positive_int(value: str) -> int:
    return _int_in(value, 1, None, "a positive integer")


def _seed(value: str) -> int:
    return _int_in(value, 0, 2**62, "a seed in [0, 2**62)")


def _steps(value: str) -> int | None:
    if value.lower() in ("all", "none"):
        return None
    return _int_in(value, 1, None, "a positive integer or 'all'")


def _finite_float(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return v


def _nonnegative_float(value: str) -> float:
    v = _finite_float(value)
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, got {value!r}")
    return v


def _version() -> str:
    from . import __version__

    return __version__


def _user_errors() -> tuple[type[BaseException], ...]:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import DataError
    from .train import TrainingError

    errors: list[type[BaseException]] = [
        UserError,
        ConfigError,
        DataError,
        CheckpointError,
        TrainingError,
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
    ]
    try:
        from .metrics.fid import FIDError  # type: ignore[attr-defined]

        errors.append(FIDError)
    except ImportError:
        pass
    return tuple(errors)


def _format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """Warnings as one ``ddpm: warning: …`` line (no source file and line)."""
    return f"ddpm: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ddpm`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if not debug:
            warnings.simplefilter("default")
            warnings.formatwarning = _format_warning
        func: Callable[[argparse.Namespace], int] = args.func
        code = func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:  # the reader went away (`ddpm … | head`): stop quietly, as Unix tools do
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit must not complain either
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured)
            pass
        return EXIT_BROKEN_PIPE
    except SystemExit as e:  # argparse --help / --version
        return int(e.code or 0) if isinstance(e.code, int) or e.code is None else EXIT_USAGE
    except KeyboardInterrupt:
        print("ddpm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns errors into one line
        if debug:
            raise
        text = str(e)
        oom = isinstance(e, MemoryError) or (
            isinstance(e, RuntimeError)
            and ("can't allocate memory" in text or "out of memory" in text.lower())
        )
        known = oom or isinstance(e, _user_errors()) or isinstance(e, (ValueError, OSError))
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if oom:
            msg = (
                f"out of memory ({msg}); lower train.batch_size, data.image_size, diffusion.timesteps "
                "or the model size"
            )
        elif not known:
            msg = f"internal error ({type(e).__name__}: {msg}); rerun with --debug for the traceback"
        elif isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.filename:
            msg = f"{e.strerror or msg}: {e.filename}"
        print(f"ddpm: error: {msg}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, UserError) else EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
