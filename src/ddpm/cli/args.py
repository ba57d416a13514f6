"""What every ``ddpm`` sub-command shares: the user-error type, argument types that refuse bad values in one
line, and the option groups (model source, evaluation, Inception network, Inception Score weights)."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn


class UserError(Exception):
    """A failure caused by the user's input: reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        command = self.prog.partition(" ")[2]  # "ddpm train" → "train"; main adds the "ddpm: error:" prefix
        raise UserError(f"{command + ': ' if command else ''}{message} (see {self.prog} --help)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_model_source(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--run", help="run directory (its newest checkpoint)")
    g.add_argument("--ckpt", help="checkpoint directory (or a file in it)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto")


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    from ..sampling import METHODS

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


def _add_inception_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--inception-weights",
        metavar="FILE",
        help="Inception classifier weights for the Inception Score: pt_inception-2015-12-05-6726825d.pth "
        "(pytorch-fid's release; default $DDPM_INCEPTION_WEIGHTS)",
    )


def _inception(args: argparse.Namespace, device: str | None = None) -> Any:
    """The FID network as ``--inception-batch`` / ``--inception-precision`` ask (None under ``--no-fid``)."""
    if getattr(args, "no_fid", False):
        return None
    from ..metrics import fid as fid_lib

    return fid_lib.InceptionFeatures(
        device=device, batch_size=args.inception_batch, bf16=args.inception_precision == "bf16"
    )


def _load(args: argparse.Namespace) -> Any:
    from ..pipeline import load_model

    src = args.run or args.ckpt
    if not src:
        raise UserError("give --run RUN_DIR or --ckpt CHECKPOINT")
    return load_model(src, ema=not args.no_ema, device=args.device)


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
