"""``ddpm distill``: a few-step student from a trained run (progressive or consistency distillation)."""

from __future__ import annotations

import argparse
from typing import Any

from .args import UserError, _add_common, _positive_int


def cmd_distill(args: argparse.Namespace) -> int:
    from ..distill import distill

    if not args.resume and not args.run:
        raise UserError("distill needs --run TEACHER (or --resume --out STUDENT)")
    if not args.resume and args.steps is None:
        raise UserError("distill needs --steps N, the student's sampling steps")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise UserError(f"--max-minutes must be positive, got {args.max_minutes:g}")
    overrides = list(args.set or [])
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    summary = distill(
        args.run,
        args.out,
        args.steps,
        args.method,
        max_minutes=args.max_minutes,
        max_steps=args.max_steps,
        round_steps=args.round_steps,
        teacher_steps=args.teacher_steps,
        overrides=overrides,
        resume=args.resume,
        progress=not args.no_progress,
    )
    print(
        f"stopped at step {summary['step']} ({summary['stop_reason']}); checkpoint: {summary['checkpoint']}; "
        f"sample it with: ddpm sample --run {args.out}"
    )
    return 0


def register(sub: Any) -> None:
    """Add ``ddpm distill`` to the ``ddpm`` parser."""
    d = sub.add_parser("distill", help="distil a trained run into a few-step student run")
    d.add_argument("--run", help="the teacher's run directory (or checkpoint)")
    d.add_argument("--out", required=True, help="the student's run directory")
    d.add_argument("--steps", type=_positive_int, help="the student's sampling steps (e.g. 4)")
    d.add_argument("--method", choices=["progressive", "consistency"], default="progressive")
    d.add_argument("--max-minutes", type=float, help="wall-clock budget (progressive: split over the rounds)")
    d.add_argument("--max-steps", type=_positive_int, help="optimizer steps in all")
    d.add_argument("--round-steps", type=_positive_int, help="progressive: optimizer steps per round")
    d.add_argument(
        "--teacher-steps",
        type=_positive_int,
        help="progressive: the teacher's DDIM steps in the first round (--steps × 2^k; default the least ≥ 64)",
    )
    d.add_argument("--data-root", help="the teacher's dataset, if it moved")
    d.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE", help="student config overrides")
    d.add_argument(
        "--resume", action="store_true", help="continue the student in --out from its newest checkpoint"
    )
    d.add_argument("--no-progress", action="store_true")
    _add_common(d)
    d.set_defaults(func=cmd_distill)
