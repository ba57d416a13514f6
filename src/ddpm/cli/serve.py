"""``ddpm serve RUN [RUN ...]``: the local page of :mod:`ddpm.serve` (needs the extra ``ddpm[serve]``)."""

from __future__ import annotations

import argparse
from typing import Any

from .args import _add_common, _int_in


def _port(value: str) -> int:
    return _int_in(value, 1, 65536, "a port number in 1..65535")


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve import serve

    serve(args.runs, host=args.host, port=args.port, device=args.device)
    return 0


def register(sub: Any) -> None:
    """Add ``ddpm serve`` to the ``ddpm`` parser."""
    p = sub.add_parser("serve", help="a local page to sample, edit, follow a run and see the forward process")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or checkpoints) to serve")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=_port, default=7860)
    p.add_argument("--device", default="auto")
    _add_common(p)
    p.set_defaults(func=cmd_serve)
