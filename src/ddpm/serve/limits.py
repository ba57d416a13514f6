"""What one request to ``ddpm serve`` may ask for, checked on the server.

The page's sliders are not the only way in: Gradio's HTTP API takes any JSON value for any input. Every handler
therefore reads its arguments through the checks here (:func:`integer`, :func:`number`, :func:`choice`,
:func:`image_array`), which refuse a value out of range with a :class:`RequestError` naming the argument, before
any work starts: ``steps = 10**9`` or ``n = -1`` is an error, never a hang. Work is bounded per request by
:class:`Limits` (images per batch, sampler steps, network evaluations, pixels of an uploaded image); requests wait
in a queue of bounded length and run a few at a time.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LOCAL_HOSTS", "Limits", "RequestError", "choice", "image_array", "integer", "is_local", "number"]

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class RequestError(ValueError):
    """A request the server refuses: a value of the wrong type or out of range. The message names the argument."""


@dataclass(frozen=True)
class Limits:
    """Server-side bounds on one request (and on the queue).

    ``max_batch`` images per request; ``max_steps`` sampler steps (never more than the run's T);
    ``max_evals`` network evaluations of one request (RePaint costs steps × jump_n_sample, Heun 2 × steps);
    ``max_image_side`` pixels on either side of an uploaded image (it is resized to the model's size after);
    ``max_frames`` interpolation frames; ``concurrency`` requests computed at once; ``queue_size`` waiting.
    """

    max_batch: int = 16
    max_steps: int = 1000
    max_evals: int = 4000
    max_image_side: int = 4096
    max_frames: int = 16
    max_samples: int = 8
    concurrency: int = 2
    queue_size: int = 64

    def steps(self, value: Any, num_timesteps: int, name: str = "steps") -> int:
        """Sampler steps in [1, min(max_steps, T)]."""
        return integer(name, value, 1, min(self.max_steps, num_timesteps))

    def batch(self, value: Any, name: str = "n") -> int:
        """Images per request in [1, max_batch]."""
        return integer(name, value, 1, self.max_batch)

    def evals(self, count: int, what: str) -> None:
        """Refuse a request that would take more than ``max_evals`` network evaluations."""
        if count > self.max_evals:
            raise RequestError(
                f"{what} takes {count} network evaluations; this server allows {self.max_evals} per request"
            )


def integer(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in [lo, hi]: ints, and floats with an integral value (sliders send 4.0), are taken;
    anything else (strings, booleans, NaN, 4.5, None) is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise RequestError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value) or value != int(value):
            raise RequestError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise RequestError(f"{name} must be {bound}, got {v}")
    return v


def number(name: str, value: Any, lo: float, hi: float) -> float:
    """``value`` as a finite float in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise RequestError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or not lo <= v <= hi:
        raise RequestError(f"{name} must be a number between {lo:g} and {hi:g}, got {value!r}")
    return v


def choice(name: str, value: Any, options: Sequence[str]) -> str:
    """``value`` if it is one of ``options``."""
    if not isinstance(value, str) or value not in options:
        shown = ", ".join(options) if len(options) <= 12 else ", ".join(options[:12]) + ", …"
        raise RequestError(f"{name} must be one of {shown}; got {value!r}")
    return value


def image_array(name: str, value: Any, limits: Limits) -> np.ndarray:
    """An uploaded image as uint8 [H, W] or [H, W, C] (C 1, 3 or 4), at most ``limits.max_image_side`` a side."""
    if value is None:
        raise RequestError(f"{name}: no image given")
    arr = np.asarray(value)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)) or min(arr.shape[:2]) < 1:
        raise RequestError(f"{name} must be an image [H, W] or [H, W, C], got shape {arr.shape}")
    if max(arr.shape[:2]) > limits.max_image_side:
        h, w = arr.shape[:2]
        raise RequestError(
            f"{name} is {w}×{h}; this server takes images up to {limits.max_image_side} a side"
        )
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
            raise RequestError(f"{name} must hold finite pixel values")
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr


def is_local(host: str) -> bool:
    """Whether binding ``host`` serves this machine only (a loopback address or ``localhost``)."""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
