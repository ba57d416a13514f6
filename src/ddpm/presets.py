"""Alias of :mod:`ddpm.nn.presets`, so that ``ddpm.presets.unet(name)`` works (see DESIGN.md)."""

from ddpm.nn.presets import *  # noqa: F403
from ddpm.nn.presets import __all__  # noqa: F401
