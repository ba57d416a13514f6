"""``ddpm convert``: diffusers folders to run directories and back."""

from __future__ import annotations

import argparse
from typing import Any

from .args import (
    UserError,
    _add_common,
)


def cmd_convert(args: argparse.Namespace) -> int:
    from ..interop.diffusers import export_diffusers, import_diffusers

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


def register(sub: Any) -> None:
    """Add this module's sub-commands to the ``ddpm`` parser."""
    cv = sub.add_parser("convert", help="import/export diffusers UNet2DModel + DDPMScheduler folders")
    cv.add_argument(
        "--from-diffusers", metavar="DIR", help="folder with unet/ and scheduler/ as diffusers saves them"
    )
    cv.add_argument("--to-diffusers", metavar="RUN_DIR", help="run directory or checkpoint to export")
    cv.add_argument("--out", required=True, help="run directory (import) or folder (export) to write")
    cv.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    _add_common(cv)
    cv.set_defaults(func=cmd_convert)
