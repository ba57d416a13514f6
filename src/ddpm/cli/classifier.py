"""``ddpm classifier``: the evaluation classifier's own command line (train | report …)."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_classifier(args: argparse.Namespace) -> int:
    from ..metrics.classifier.cli import main

    return main(args.rest)


def register(sub: Any) -> None:
    """Add this module's sub-commands to the ``ddpm`` parser."""
    c = sub.add_parser(
        "classifier", help="train or apply the evaluation classifier (train|report ...)", add_help=False
    )
    c.add_argument("rest", nargs=argparse.REMAINDER)
    c.set_defaults(func=cmd_classifier)
