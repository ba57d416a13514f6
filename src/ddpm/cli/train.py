"""``ddpm train``, ``ddpm demo``, ``ddpm presets`` and ``ddpm info``."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from .args import (
    UserError,
    _add_common,
    _positive_int,
)

# Fewest training steps after which the demo preset draws recognisable digits (measured: see the README).
DEMO_MIN_STEPS = 400


def _train_config(args: argparse.Namespace) -> Any:
    from ..config import apply_overrides, config_from_dict
    from ..recipes import get_recipe

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


def cmd_train(args: argparse.Namespace) -> int:
    from ..config import config_to_dict
    from ..nn.unet import UNet
    from ..train import Trainer

    cfg = _train_config(args)
    if args.dry_run:
        from ..builders import resolve_config
        from ..runtime import resolve_device, resolve_precision
        from ..train import validate_config

        validate_config(cfg)  # refuse what a real run would refuse
        resolve_precision(cfg.train.precision, resolve_device(cfg.train.device))
        cfg = resolve_config(cfg)  # what the data would decide, from the dataset's registered defaults
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


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from ..config import apply_overrides
    from ..pipeline import generate, load_model, save_images
    from ..recipes import get_recipe
    from ..train import Trainer
    from ..viz import forward_strip

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


def cmd_presets(args: argparse.Namespace) -> int:
    from ..recipes import RECIPES, recipe_names

    for name in recipe_names():
        print(f"{name:<24} {RECIPES[name].__doc__ or ''}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..checkpoint import list_checkpoints, load_checkpoint
    from ..nn.unet import UNet
    from ..viz import loss_stats, read_metrics

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


def register(sub: Any) -> None:
    """Add this module's sub-commands to the ``ddpm`` parser."""
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
