"""The time-conditioned U-Net of DDPM and its variants, as options of one set of blocks.

One :class:`UNet` covers

* Ho et al. 2020 (DDPM, arXiv:2006.11239, App. B): wide-ResNet blocks, GroupNorm, SiLU, single-head self-attention
  at 16×16, sinusoidal time embedding → MLP, a skip connection saved after *every* block ("block" skips),
  stride-2 conv downsampling, nearest + conv upsampling. With the ``ddpm-cifar10`` preset the module tree maps
  one-to-one onto diffusers' ``UNet2DModel`` (see :mod:`ddpm.interop.diffusers`).
* Nichol & Dhariwal 2021 (Improved DDPM, arXiv:2102.09672) and Dhariwal & Nichol 2021 (arXiv:2105.05233):
  multi-head attention, scale-shift norm (AdaGN, ``h = GN(h)·(1 + s) + b``), BigGAN-style up/down residual
  blocks, class embeddings added to the time embedding.
* The smaller networks of the project's seed documents (one skip per resolution level, "level" skips;
  transposed-conv or plain nearest upsampling; pooling; plain Conv→[GN]→act blocks; the γ-gated self-attention
  ``x + γ·Attn(x)`` with γ initialised at 0).

The network knows nothing about noise schedules: ``forward(x, t, y)`` returns a tensor with ``out_channels``
channels; :mod:`ddpm.diffusion` interprets it (ε, x₀, v, or ε and the variance interpolation v of iDDPM).

Shapes: ``x`` is ``[N, C, H, W]`` for any H, W ≥ 1 (not necessarily divisible by 2^levels: every downsampling
halves with ceiling, every upsampling returns to the spatial size of the matching skip connection).

This module owns the assembly: which blocks go at which level, the skip connections, the bottleneck, the
output head, the weight initialisation and ``forward``. The options are :class:`~ddpm.nn.config.UNetConfig`
(:mod:`ddpm.nn.config`); the layers are in :mod:`ddpm.nn.blocks`. Every name importable from here before the
split (the blocks, :class:`UNetConfig`, the private fast-path helpers the tests use) is re-exported, so
``from ddpm.nn.unet import …`` keeps working.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import (
    AttentionBlock,
    ConvBlock,
    Downsample,
    ResBlock,
    SinusoidalEmbedding,
    TimestepEmbedding,
    Upsample,
    _activation,
    _norm,
)

# The CPU fast paths, re-exported for the import path of before the split (the tests import them from here).
from .blocks import _attention as _attention
from .blocks import _dropout as _dropout
from .blocks import _subpixel_weight as _subpixel_weight
from .config import UNetConfig

__all__ = [
    "UNetConfig",
    "UNet",
    "SinusoidalEmbedding",
    "TimestepEmbedding",
    "ResBlock",
    "ConvBlock",
    "AttentionBlock",
    "Downsample",
    "Upsample",
]


class UNetLevel(nn.Module):
    """The blocks of one resolution level: ``blocks[j]``, ``attns[j]`` (after each block with "block" skips,
    one after the last block with "level" skips) and an optional ``downsample`` or ``upsample``."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attns = nn.ModuleList()
        self.downsample: nn.Module | None = None
        self.upsample: nn.Module | None = None


class MidBlock(nn.Module):
    """Bottleneck: ``blocks[0] → attn → blocks[1] → …`` (Ho et al.: res, attn, res)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.attn: nn.Module | None = None

    def forward(self, h: Tensor, emb: Tensor | None) -> Tensor:
        for k, block in enumerate(self.blocks):
            h = block(h, emb)
            if k == 0 and self.attn is not None:
                h = self.attn(h)
        return h


# ====================================================================== the network


class UNet(nn.Module):
    """Time-conditioned U-Net ε_θ(x_t, t[, y]) (Ho et al. 2020 App. B; Ronneberger et al. 2015).

    ``forward(x [N, C_in, H, W], t [N] long or float, y [N] long | None) → [N, C_out, H, W]``.
    For a class-conditional model ``y=None`` (or label ``num_classes``) means the null label of
    classifier-free guidance. Works for any H, W (odd sizes included) and in channels_last / bf16 autocast.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise TypeError(f"UNet expects a UNetConfig, got {type(config).__name__}")
        self.config = cfg = config
        chs, res = cfg.channels, cfg.level_resolutions
        emb_ch = cfg.embed_channels
        level_emb = emb_ch if cfg.time_conditioning == "all" else None
        level_skips = cfg.skip_connections == "level"

        def block(c_in: int, c_out: int, emb: int | None = level_emb) -> nn.Module:
            if cfg.block == "conv":
                return ConvBlock(cfg, c_in, c_out, emb)
            return ResBlock(cfg, c_in, c_out, emb)

        def down_op(c: int) -> nn.Module:
            if cfg.resblock_updown:
                return ResBlock(cfg, c, c, level_emb, updown="down")
            return Downsample(c, cfg.downsample, cfg.downsample_padding)

        def up_op(c: int) -> nn.Module:
            if cfg.resblock_updown:
                return ResBlock(cfg, c, c, level_emb, updown="up")
            return Upsample(c, cfg.upsample)

        # --- embeddings (Ho et al. App. B; class embedding as in improved-diffusion's label_emb)
        self.time_embed = TimestepEmbedding(cfg)
        self.class_embed = nn.Embedding(cfg.num_classes + 1, emb_ch) if cfg.num_classes is not None else None
        self.act = _activation(cfg.activation)

        # --- encoder
        p2 = cfg.patch_size**2
        self.conv_in = nn.Conv2d(cfg.in_channels * p2, chs[0], 3, padding=1) if cfg.input_conv else None
        ch = chs[0] if cfg.input_conv else cfg.in_channels * p2
        skip_chs = [] if level_skips else [ch]
        self.down = nn.ModuleList()
        for i, out_ch in enumerate(chs):
            level, attn = UNetLevel(), res[i] in cfg.attention_resolutions
            for _ in range(cfg.num_res_blocks):
                level.blocks.append(block(ch, out_ch))
                ch = out_ch
                if attn and not level_skips:
                    level.attns.append(AttentionBlock(cfg, ch))
                if not level_skips:
                    skip_chs.append(ch)
            if attn and level_skips:
                level.attns.append(AttentionBlock(cfg, ch))
            if level_skips:
                skip_chs.append(ch)
            if level_skips or i < len(chs) - 1:
                level.downsample = down_op(ch)
                if not level_skips:
                    skip_chs.append(ch)
            self.down.append(level)

        # --- bottleneck
        self.mid = MidBlock()
        for k, out_ch in enumerate(cfg.mid_channels):
            self.mid.blocks.append(block(ch, out_ch, emb_ch))
            ch = out_ch
            if k == 0 and cfg.mid_attention:
                self.mid.attn = AttentionBlock(cfg, ch)

        # --- decoder (coarsest level first, as diffusers' up_blocks)
        self.up = nn.ModuleList()
        for i in reversed(range(len(chs))):
            level, attn = UNetLevel(), res[i] in cfg.attention_resolutions
            if level_skips:
                level.upsample = up_op(ch)
                ch += skip_chs.pop()
                for j in range(cfg.num_res_blocks):
                    last_finer = cfg.decoder_channels == "finer" and j == cfg.num_res_blocks - 1
                    out_ch = chs[max(i - 1, 0)] if last_finer else chs[i]
                    level.blocks.append(block(ch, out_ch))
                    ch = out_ch
                if attn:
                    level.attns.append(AttentionBlock(cfg, ch))
            else:
                for _ in range(cfg.num_res_blocks + 1):
                    level.blocks.append(block(ch + skip_chs.pop(), chs[i]))
                    ch = chs[i]
                    if attn:
                        level.attns.append(AttentionBlock(cfg, ch))
                if i > 0:
                    level.upsample = up_op(ch)
            self.up.append(level)
        assert not skip_chs, "internal error: unused skip connections"

        # --- output head
        self.norm_out = _norm(cfg, ch) if cfg.out_norm_act else None
        head_in = ch + (cfg.in_channels * p2 if cfg.input_skip else 0)
        k = cfg.out_kernel_size
        self.conv_out = nn.Conv2d(head_in, cfg.out_channels * p2, k, padding=k // 2)

        self._init_weights()

    # ------------------------------------------------------------------ init
    def _init_weights(self) -> None:
        cfg = self.config
        if cfg.weight_init == "ho":  # variance_scaling(1, 'fan_avg', 'uniform') = Xavier uniform; zero biases
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        if cfg.zero_init:  # Ho et al.'s init_scale=0 on conv2, proj_out and conv_out
            zero: list[nn.Conv2d | nn.Linear] = [self.conv_out]
            for m in self.modules():
                if isinstance(m, ResBlock):
                    zero.append(m.conv2)
                elif isinstance(m, AttentionBlock) and m.proj_out is not None:
                    zero.append(m.proj_out)
            for layer in zero:
                nn.init.zeros_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

    # ------------------------------------------------------------------ forward
    def embed(self, t: Tensor | int | float, y: Tensor | None, batch: int, dtype: torch.dtype) -> Tensor:
        """Embedding fed to the blocks: ``act(MLP(sinusoid(t)) + E[y])`` → ``[N, D]`` (sinusoid only if no MLP)."""
        if not torch.is_tensor(t):
            t = torch.full((batch,), t, device=self.conv_out.weight.device)
        elif t.ndim == 0:
            t = t.expand(batch)
        emb = self.time_embed(t, dtype)
        if self.class_embed is not None:
            if y is None:  # null label (classifier-free guidance), broadcast over the batch
                emb = emb + self.class_embed.weight[self.config.num_classes].to(emb.dtype)
            else:
                emb = emb + self.class_embed(y).to(emb.dtype)
        elif y is not None:
            raise ValueError("this UNet is unconditional (num_classes=None) but class labels y were given")
        return self.act(emb) if self.time_embed.linear_1 is not None else emb

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """``x [N, C_in, H, W]``, ``t [N]`` (integer or float timesteps), ``y [N]`` labels → ``[N, C_out, H, W]``."""
        emb = self.embed(t, y, x.shape[0], x.dtype)
        level_emb = emb if self.config.time_conditioning == "all" else None
        p, height, width = self.config.patch_size, x.shape[-2], x.shape[-1]
        if p > 1:  # space-to-depth; sizes not divisible by p are padded (edge values) and cropped at the end
            x = F.pixel_unshuffle(F.pad(x, (0, -width % p, 0, -height % p), mode="replicate"), p)
        h = self.conv_in(x) if self.conv_in is not None else x
        # nn.ModuleList iterates as nn.Module; its items here are UNetLevels (cast: no runtime effect).
        down, up = cast("Sequence[UNetLevel]", self.down), cast("Sequence[UNetLevel]", self.up)

        if self.config.skip_connections == "block":
            skips = [h]
            for level in down:
                for j, block in enumerate(level.blocks):
                    h = block(h, level_emb)
                    if level.attns:
                        h = level.attns[j](h)
                    skips.append(h)
                if level.downsample is not None:
                    h = self._resample(level.downsample, h, level_emb, None)
                    skips.append(h)
            h = self.mid(h, emb)
            for level in up:
                for j, block in enumerate(level.blocks):
                    h = block(torch.cat([h, skips.pop()], dim=1), level_emb)
                    if level.attns:
                        h = level.attns[j](h)
                if level.upsample is not None:
                    size = (skips[-1].shape[-2], skips[-1].shape[-1])
                    h = self._resample(level.upsample, h, level_emb, size)
        else:
            skips = []
            for level in down:
                for block in level.blocks:
                    h = block(h, level_emb)
                if level.attns:
                    h = level.attns[0](h)
                skips.append(h)
                if level.downsample is not None:  # always, with "level" skips
                    h = self._resample(level.downsample, h, level_emb, None)
            h = self.mid(h, emb)
            for level in up:
                skip = skips.pop()
                if level.upsample is not None:  # always, with "level" skips
                    h = self._resample(level.upsample, h, level_emb, (skip.shape[-2], skip.shape[-1]))
                h = torch.cat([h, skip], dim=1)
                for block in level.blocks:
                    h = block(h, level_emb)
                if level.attns:
                    h = level.attns[0](h)

        if self.norm_out is not None:
            h = self.act(self.norm_out(h))
        if self.config.input_skip:
            h = torch.cat([h, x], dim=1)
        out = self.conv_out(h)
        if p > 1:
            out = F.pixel_shuffle(out, p)[..., :height, :width]
        return out

    @staticmethod
    def _resample(op: nn.Module, h: Tensor, emb: Tensor | None, size: tuple[int, int] | None) -> Tensor:
        if isinstance(op, ResBlock):
            return op(h, emb, size)
        if isinstance(op, Upsample):
            return op(h, size)
        return op(h)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self) -> str:
        return f"params={self.num_parameters():,}"
