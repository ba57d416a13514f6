"""The layers the U-Net is assembled from: time embeddings, residual and plain conv blocks, self-attention,
down- and upsampling.

Each block takes the :class:`~ddpm.nn.config.UNetConfig` options it needs and its widths; none knows where it
sits in the network (that is :mod:`ddpm.nn.unet`) or anything about noise schedules. The attribute names here
(``norm1``, ``conv1``, ``time_proj``, ``qkv``, ``proj_out`` …) are state-dict keys: checkpoints and the
diffusers conversion (:mod:`ddpm.interop.diffusers`) rely on them. Also here: the CPU fast paths the blocks use
(:func:`_attention`, :func:`_dropout`, the sub-pixel form of nearest + conv upsampling :func:`_subpixel_weight`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Activation, DownsampleKind, DownsamplePadding, UNetConfig, UpsampleKind

__all__ = [
    "SinusoidalEmbedding",
    "TimestepEmbedding",
    "ResBlock",
    "ConvBlock",
    "AttentionBlock",
    "Downsample",
    "Upsample",
]


def _activation(name: Activation) -> nn.Module:
    return nn.SiLU() if name == "silu" else nn.ReLU()


def _norm(cfg: UNetConfig, channels: int) -> nn.Module:
    if cfg.norm == "none":
        return nn.Identity()
    return nn.GroupNorm(cfg.norm_groups, channels, eps=cfg.norm_eps)


class SinusoidalEmbedding(nn.Module):
    """Transformer sinusoidal features of the timestep (Ho et al. 2020, §3.4 / App. B; Vaswani et al. 2017).

    ``emb(t) = [sin(t·ω_0) … sin(t·ω_{h-1}), cos(t·ω_0) … cos(t·ω_{h-1})]`` with ``h = dim // 2`` and
    ``ω_i = exp(-ln(10000) · i / (h - freq_shift))``; ``flip_sin_to_cos`` swaps the halves. The frequencies
    are a non-persistent float32 buffer that stays float32 when the module is cast to half precision
    (``t·ω`` for t ≈ 1000 needs float32). Input ``t``: ``[N]`` integer or float; output ``[N, dim]`` float32.
    """

    freqs: Tensor

    def __init__(
        self, dim: int, flip_sin_to_cos: bool = False, freq_shift: float = 1.0, max_period: float = 1e4
    ):
        super().__init__()
        self.dim, self.flip_sin_to_cos = dim, flip_sin_to_cos
        half = dim // 2
        # Same float32 operation order as diffusers' get_timestep_embedding (bitwise-equal embeddings).
        exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - freq_shift)
        self.register_buffer("freqs", torch.exp(exponent), persistent=False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> SinusoidalEmbedding:
        freqs = self.freqs
        super()._apply(fn, recurse)
        if self.freqs.dtype != torch.float32:  # keep the float32 values; follow device moves only
            self.freqs = freqs.to(device=self.freqs.device)
        return self

    def forward(self, t: Tensor) -> Tensor:
        args = t.to(torch.float32)[:, None] * self.freqs[None, :]
        first, second = (args.cos(), args.sin()) if self.flip_sin_to_cos else (args.sin(), args.cos())
        emb = torch.cat([first, second], dim=-1)
        if self.dim % 2:
            emb = F.pad(emb, (0, 1))
        return emb


class TimestepEmbedding(nn.Module):
    """``t [N] → sinusoid [N, S] → Linear → act → Linear → [N, D]`` (Ho et al. App. B); no MLP if disabled."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.sinusoid = SinusoidalEmbedding(
            cfg.sinusoid_channels, cfg.time_flip_sin_to_cos, cfg.time_freq_shift
        )
        if cfg.time_mlp:
            self.linear_1: nn.Module | None = nn.Linear(cfg.sinusoid_channels, cfg.embed_channels)
            self.act = _activation(cfg.activation)
            self.linear_2: nn.Module | None = nn.Linear(cfg.embed_channels, cfg.embed_channels)
        else:
            self.linear_1 = self.linear_2 = None

    def forward(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        emb = self.sinusoid(t).to(dtype)
        if self.linear_1 is not None and self.linear_2 is not None:
            emb = self.linear_2(self.act(self.linear_1(emb)))
        return emb


def _resample(x: Tensor, mode: Literal["down", "up"], size: tuple[int, int] | None) -> Tensor:
    """Parameter-free ×½ (average pool, ceiling) or ×2 (nearest, to ``size``) used by BigGAN-style blocks."""
    if mode == "down":
        return F.avg_pool2d(x, 2, ceil_mode=True)
    return F.interpolate(
        x, size=size if size is not None else (2 * x.shape[-2], 2 * x.shape[-1]), mode="nearest"
    )


def _dropout(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)``; for an ``nn.Dropout`` training on the CPU, the same dropout from a ``torch.rand`` mask.

    Keep with probability ``1 − p`` and scale by ``1 / (1 − p)``, as ``F.dropout``; on the CPU ``bernoulli_``
    is much slower per element than ``rand`` and made dropout a visible share of a training step.
    """
    if isinstance(module, nn.Dropout) and module.training and x.device.type == "cpu" and 0 < module.p < 1:
        keep, scale = torch.rand(x.shape, device=x.device).ge_(module.p), 1 / (1 - module.p)
        if x.dtype == torch.float32:
            return x * keep.mul_(scale)
        return x * keep.to(x.dtype) * scale  # 0/1 is exact in any dtype; the scalar product rounds once
    return module(x)


class ResBlock(nn.Module):
    """Wide-ResNet block with time conditioning (Ho et al. App. B; Zagoruyko & Komodakis 2016).

    ``h = conv1(act(GN(x)))``; ``h = h + W·e`` (or AdaGN: ``GN(h)·(1 + s) + b`` with ``[s, b] = W·e``);
    ``h = conv2(dropout(act(GN(h))))``; ``out = shortcut(x) + h`` with a 1×1 shortcut when the width changes.
    ``e`` is the activated embedding ``act(emb)`` (computed once per forward by :class:`UNet`).
    ``updown="down"|"up"`` makes it a BigGAN-style resampling block (Brock et al. 2019): x and h are resampled
    after the first activation. ``x: [N, C_in, H, W] → [N, C_out, H', W']``.
    """

    def __init__(
        self,
        cfg: UNetConfig,
        in_channels: int,
        out_channels: int,
        embed_channels: int | None,
        updown: Literal["down", "up"] | None = None,
    ):
        super().__init__()
        self.scale_shift = cfg.use_scale_shift_norm and embed_channels is not None
        self.updown = updown
        self.norm1 = _norm(cfg, in_channels)
        self.act = _activation(cfg.activation)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj: nn.Linear | None = None
        if embed_channels is not None:
            self.time_proj = nn.Linear(embed_channels, out_channels * (2 if self.scale_shift else 1))
        self.norm2 = _norm(cfg, out_channels)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: Tensor, emb: Tensor | None, size: tuple[int, int] | None = None) -> Tensor:
        h = self.act(self.norm1(x))
        if self.updown is not None:
            h, x = _resample(h, self.updown, size), _resample(x, self.updown, size)
        h = self.conv1(h)
        if self.time_proj is not None:
            e = self.time_proj(emb)[:, :, None, None]
            if self.scale_shift:  # AdaGN (Nichol & Dhariwal 2021, §A / Dhariwal & Nichol 2021, eq. in §3)
                scale, shift = e.chunk(2, dim=1)
                h = torch.addcmul(shift, self.norm2(h), 1 + scale)
            else:
                h = self.norm2(h + e)
        else:
            h = self.norm2(h)
        h = self.conv2(_dropout(self.dropout, self.act(h)))
        return self.shortcut(x) + h


class ConvBlock(nn.Module):
    """Plain U-Net block ``Conv3×3 → [GN] → (+ W·e) → act → [dropout]`` (the paper's Diffusion_model_1/2).

    ``x: [N, C_in, H, W] → [N, C_out, H, W]``; without ``embed_channels`` the block ignores time.
    """

    def __init__(self, cfg: UNetConfig, in_channels: int, out_channels: int, embed_channels: int | None):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm = _norm(cfg, out_channels)
        self.time_proj = nn.Linear(embed_channels, out_channels) if embed_channels is not None else None
        self.act = _activation(cfg.activation)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None, size: tuple[int, int] | None = None) -> Tensor:
        h = self.norm(self.conv(x))
        if self.time_proj is not None:
            h = h + self.time_proj(emb)[:, :, None, None]
        return self.dropout(self.act(h))


def _attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(q kᵀ / √d) v`` over ``[N, heads, L, d]`` tensors.

    On the CPU in bf16/fp16 two batched matmuls around a softmax (float32 arithmetic inside PyTorch's kernel,
    output in the input dtype as the second matmul needs it) run several times faster than PyTorch's
    flash-attention CPU kernel (``benchmarks/unet_throughput.py`` measures the network), so they are used there
    while the L×L scores stay small; everywhere else ``F.scaled_dot_product_attention``.
    """
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-2] <= 1024:
        with torch.autocast("cpu", enabled=False):  # already low precision: no float32 softmax output
            scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
            return torch.matmul(scores.softmax(-1), v)
    return F.scaled_dot_product_attention(q, k, v)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H·W positions (Ho et al. App. B; Vaswani et al. 2017).

    ``h = GN(x)``; ``[q, k, v] = W_qkv h`` (one fused projection; heads of width ``d = C / heads``);
    ``a = softmax(q kᵀ / √d) v`` via ``F.scaled_dot_product_attention``; ``out = x + W_o a``, or with
    ``gated=True`` ``out = x + γ·a`` with a scalar γ initialised at 0 (Zhang et al. 2019, SAGAN; the paper's
    layer). ``x: [N, C, H, W] → [N, C, H, W]``.
    """

    def __init__(self, cfg: UNetConfig, channels: int):
        super().__init__()
        self.heads = cfg.heads(channels)
        self.norm = _norm(cfg, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        if cfg.attention_gate:
            self.proj_out: nn.Linear | None = None
            self.gamma: nn.Parameter | None = nn.Parameter(torch.zeros(()))
        else:
            self.proj_out = nn.Linear(channels, channels)
            self.gamma = None

    def forward(self, x: Tensor) -> Tensor:
        n, c, height, width = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # [N, L, C], a view for channels_last inputs
        q, k, v = self.qkv(h).unflatten(-1, (3, self.heads, c // self.heads)).permute(2, 0, 3, 1, 4).unbind(0)
        a = _attention(q, k, v)  # [N, heads, L, d], scale 1/√d
        a = a.transpose(1, 2).reshape(n, height * width, c)
        if self.proj_out is not None:
            a = self.proj_out(a)
        a = a.transpose(1, 2).reshape(n, c, height, width)  # a view: channels_last strides
        return x + a if self.gamma is None else x + self.gamma * a


class Downsample(nn.Module):
    """Halve the spatial size (with ceiling, so odd sizes work): strided conv or 2×2 pooling.

    ``"conv"`` with ``padding="tf_same"`` pads right/bottom by one on even sizes (Ho et al.'s TF 'SAME',
    diffusers' ``downsample_padding=0``) and symmetrically on odd sizes. ``x: [N, C, H, W] → [N, C, ⌈H/2⌉, ⌈W/2⌉]``.
    """

    def __init__(self, channels: int, kind: DownsampleKind, padding: DownsamplePadding = "symmetric"):
        super().__init__()
        self.kind, self.tf_same = kind, kind == "conv" and padding == "tf_same"
        self.conv: nn.Conv2d | None = None
        if kind == "conv":
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if self.tf_same else 1)
        elif kind == "conv4x4":
            self.conv = nn.Conv2d(channels, channels, 4, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:  # "maxpool" / "avgpool": parameter-free
            pool = F.max_pool2d if self.kind == "maxpool" else F.avg_pool2d
            return pool(x, 2, ceil_mode=True)
        odd_h, odd_w = x.shape[-2] % 2, x.shape[-1] % 2
        if self.tf_same:  # total padding 1 on even sizes (0 left, 1 right), 2 on odd ones (1, 1)
            x = F.pad(x, (odd_w, 1, odd_h, 1))
        elif self.kind == "conv4x4" and (odd_h or odd_w):  # 4×4/s2/p1 floors odd sizes: one more row/column
            x = F.pad(x, (0, odd_w, 0, odd_h))
        return self.conv(x)


class Upsample(nn.Module):
    """Return to the size of the skip connection: nearest (+3×3 conv) or a 4×4 stride-2 transposed conv.

    ``x: [N, C, h, w] → [N, C, H, W]`` with ``(H, W) = size`` (``2h, 2w`` when ``size`` is None); a transposed
    conv's ``2h`` output is cropped when the skip is odd-sized.
    """

    def __init__(self, channels: int, kind: UpsampleKind):
        super().__init__()
        self.kind = kind
        self.conv: nn.Module | None = None
        if kind == "nearest_conv":
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        elif kind == "transposed":
            self.conv = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        if size is None:
            size = (2 * x.shape[-2], 2 * x.shape[-1])
        if self.conv is None:  # "nearest": parameter-free
            return F.interpolate(x, size=size, mode="nearest")
        if self.kind == "transposed":
            x = self.conv(x)
            if tuple(x.shape[-2:]) != tuple(size):
                x = x[..., : size[0], : size[1]]
            return x
        if self.kind == "nearest_conv" and tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1]):
            # Nearest ×2 then a 3×3 conv equals a 4×4 stride-2 transposed conv at the low resolution: each
            # output pixel sees 2×2 input pixels, with the 3×3 taps that land on the same one summed. 4/9 of the
            # multiply-adds and no upsampled intermediate (faster on CPU). The kernel is derived in float32 each
            # call (cheap next to the conv), so it follows the weights; autocast then casts it like any conv weight.
            conv = self.conv
            assert isinstance(conv, nn.Conv2d)
            return F.conv_transpose2d(x, _subpixel_weight(conv.weight), conv.bias, stride=2, padding=1)
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


def _subpixel_weight(weight: Tensor) -> Tensor:
    """The ``[C_in, C_out, 4, 4]`` transposed-conv kernel equal to nearest ×2 upsampling followed by the 3×3
    convolution ``weight [C_out, C_in, 3, 3]`` (padding 1).

    Per axis, output ``2i`` is ``w₀·x[i−1] + (w₁ + w₂)·x[i]`` and output ``2i+1`` is ``(w₀ + w₁)·x[i] + w₂·x[i+1]``;
    the transposed conv (stride 2, padding 1) reads its taps ``[w₂, w₁ + w₂, w₀ + w₁, w₀]``.
    """

    def taps(w: Tensor, dim: int) -> Tensor:
        w0, w1, w2 = w.unbind(dim)
        return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)

    return taps(taps(weight, 2), 3).transpose(0, 1)
