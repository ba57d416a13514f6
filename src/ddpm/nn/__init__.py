"""Neural networks: the time-conditioned U-Net and its named presets."""

from .unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig"]
