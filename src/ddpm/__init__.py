"""ddpm: Denoising Diffusion Probabilistic Models, end to end."""

__version__ = "0.1.0"
