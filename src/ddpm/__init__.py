"""ddpm: Denoising Diffusion Probabilistic Models, end to end.

>>> import ddpm
>>> schedule = ddpm.NoiseSchedule.linear(T=1000)
>>> diffusion = ddpm.GaussianDiffusion(schedule, prediction="eps")
>>> model = ddpm.presets.unet("tiny")
>>> x = ddpm.sample(model, diffusion, (4, 1, 16, 16), method="ddim", steps=10)  # doctest: +SKIP
"""

from . import presets
from .diffusion import GaussianDiffusion
from .editing import inpaint, interpolate, invert, sdedit
from .nn.unet import UNet, UNetConfig
from .sampling import sample
from .schedule import NoiseSchedule

__version__ = "0.1.0"

__all__ = [
    "GaussianDiffusion",
    "NoiseSchedule",
    "UNet",
    "UNetConfig",
    "inpaint",
    "interpolate",
    "invert",
    "presets",
    "sample",
    "sdedit",
    "__version__",
]
