"""Where and how a network runs: the device, the numeric precision and its autocast context.

Shared by training, sampling and evaluation, so inference needs nothing from :mod:`ddpm.train`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError

__all__ = ["autocast_context", "cpu_has_fast_bf16", "resolve_device", "resolve_precision"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else the CPU; otherwise ``cpu``, ``cuda[:N]`` or ``mps``, checked to exist
    (a :class:`~ddpm.config.ConfigError` line otherwise)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device {name!r}") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"train.device: {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device={name}: there are only {torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device=mps but MPS is not available")
    return dev


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bf16 matrix units (AMX or AVX512-BF16), where bf16 beats fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → bf16 on CUDA with bf16 support and on CPUs with AMX/AVX512-BF16, else fp32 (fp16 on CUDA
    without bf16); fp16 on a CPU is refused."""
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 on the CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for bf16/fp16, a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
