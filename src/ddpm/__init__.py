"""ddpm: Denoising Diffusion Probabilistic Models, end to end.

>>> import ddpm
>>> schedule = ddpm.NoiseSchedule.linear(T=1000)
>>> diffusion = ddpm.GaussianDiffusion(schedule, prediction="eps")
>>> model = ddpm.presets.unet("tiny")
>>> x = ddpm.sample(model, diffusion, (4, 1, 16, 16), method="ddim", steps=10)  # doctest: +SKIP
"""

from .diffusion import GaussianDiffusion
from .sampling import sample
from .schedule import NoiseSchedule

__version__ = "0.1.0"

__all__ = ["GaussianDiffusion", "NoiseSchedule", "sample", "__version__"]

try:  # the network package is optional at import time only while it is being built
    from . import presets
    from .nn.unet import UNet, UNetConfig

    __all__ += ["UNet", "UNetConfig", "presets"]
except ImportError:  # pragma: no cover
    pass
