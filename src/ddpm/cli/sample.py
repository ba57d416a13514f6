"""``ddpm sample`` and ``ddpm viz``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..sampling import METHODS
from .args import (
    UserError,
    _add_common,
    _add_model_source,
    _finite_float,
    _load,
    _nonnegative_float,
    _positive_int,
    _seed,
    _steps,
)


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


def cmd_sample(args: argparse.Namespace) -> int:
    from ..pipeline import generate, save_images

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
        from ..viz import class_grid

        path = class_grid(images, lm.config.model.num_classes, out)
    else:
        path = save_images(images, out, labels)
    print(f"wrote {len(images)} samples to {path} in {dt:.1f}s")
    return 0


def cmd_viz(args: argparse.Namespace) -> int:
    from .. import figures
    from ..pipeline import load_model

    out, what = Path(args.out), args.what
    sampling = {"method": args.method, "steps": args.steps, "seed": args.seed}
    if what == "schedules":
        figures.schedules(out)
    elif what == "losses":
        figures.losses(args.run or "", out)
    elif what == "forward":
        figures.forward(
            out, args.n, run=args.run, data=args.data, data_root=args.data_root, schedule=args.schedule
        )
    elif not args.run:
        raise UserError(f"viz {what} needs --run RUN_DIR")
    else:
        lm = load_model(args.run)
        if what in ("denoise", "gif"):
            figures.denoising(lm, args.n, out, gif=what == "gif", **sampling)
        elif what == "grid":
            figures.sample_grid(lm, args.n, out, **sampling)
        elif what == "real-vs-generated":
            figures.real_vs_generated(lm, args.n, out, data_root=args.data_root, **sampling)
        elif what == "classes":
            figures.class_grid(lm, args.n, out, guidance=args.guidance, **sampling)
    print(f"wrote {out}")
    return 0


def register(sub: Any) -> None:
    """Add this module's sub-commands to the ``ddpm`` parser."""
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
