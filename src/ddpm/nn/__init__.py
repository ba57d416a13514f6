"""Neural networks: the time-conditioned U-Net and its named presets.

``config`` (:class:`UNetConfig`, the options and their checks), ``blocks`` (the layers), ``unet`` (the
:class:`UNet` assembled from them; also re-exports the other two's names) and ``presets`` (named architectures).
This package imports nothing else of :mod:`ddpm`.
"""

from .config import UNetConfig
from .unet import UNet

__all__ = ["UNet", "UNetConfig"]
