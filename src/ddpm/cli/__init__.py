"""The ``ddpm`` command: a thin layer over the library, one module per command group (:mod:`.train`,
:mod:`.sample`, :mod:`.edit`, :mod:`.evaluate`, :mod:`.convert`, :mod:`.classifier`, :mod:`.distill`,
:mod:`.serve`), each registering its sub-commands.

Every failure a user can cause ends in one line on stderr (``ddpm: error: …``) and a non-zero exit; ``--debug``
shows the traceback instead. The library raises typed errors that say what is wrong; :func:`main` maps them to
that line (and names the flag where the library names a config key).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence

from . import classifier, convert, distill, edit, evaluate, sample, serve, train
from .args import UserError, _Parser
from .train import DEMO_MIN_STEPS

__all__ = [
    "DEMO_MIN_STEPS",
    "EXIT_BROKEN_PIPE",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "UserError",
    "build_parser",
    "main",
]

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_BROKEN_PIPE = 128 + 13  # what a Unix tool killed by SIGPIPE returns (`ddpm … | head`)


def build_parser() -> argparse.ArgumentParser:
    """The ``ddpm`` parser with every sub-command."""
    p = _Parser(prog="ddpm", description="Denoising Diffusion Probabilistic Models: train, sample, evaluate.")
    p.add_argument("--version", action="version", version=f"ddpm {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for group in (train, sample, edit, evaluate, convert, classifier, distill, serve):
        group.register(sub)
    return p


def _version() -> str:
    from .. import __version__

    return __version__


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..data import DataError
    from ..distill import DistillError
    from ..metrics.classifier import ClassifierError
    from ..serve import ServeError
    from ..train import TrainingError

    return (
        UserError,
        ConfigError,
        DataError,
        CheckpointError,
        TrainingError,
        DistillError,
        ClassifierError,
        ServeError,
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        NotADirectoryError,
    )


def _with_flags(msg: str, e: BaseException, args: argparse.Namespace | None) -> str:
    """The library names config keys; where the command has a flag for one, say so too."""
    from ..data import DataError

    if isinstance(e, DataError) and "data.root" in msg and args is not None and hasattr(args, "data_root"):
        return f"{msg} (pass --data-root DIR)"
    return msg


def _format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """Warnings as one ``ddpm: warning: …`` line (no source file and line)."""
    return f"ddpm: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ddpm`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args: argparse.Namespace | None = None
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
        else:
            msg = _with_flags(msg, e, args)
        print(f"ddpm: error: {msg}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, UserError) else EXIT_FAILURE
