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
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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

_ACTIVATIONS = ("silu", "relu")
_NORMS = ("group", "none")
_BLOCKS = ("resnet", "conv")
_DOWNSAMPLES = ("conv", "conv4x4", "maxpool", "avgpool")
_DOWNSAMPLE_PADDINGS = ("tf_same", "symmetric")
_UPSAMPLES = ("nearest_conv", "transposed", "nearest")
_SKIPS = ("block", "level")
_DECODER_CHANNELS = ("level", "finer")
_TIME_CONDITIONING = ("all", "mid")
_WEIGHT_INITS = ("ho", "torch")


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of :class:`UNet`. The defaults are Ho et al. 2020's CIFAR-10 network (35.7 M parameters).

    Level ``i`` has ``base_channels * channel_mult[i]`` channels and works at ``ceil(image_size / 2**i)``
    pixels. Every field is validated in ``__post_init__``; a bad value raises one ``ValueError`` naming it.

    Core fields
        in_channels, out_channels: image channels in and network channels out (2·C for learned variances).
        base_channels: width of level 0 (``ch`` in Ho et al., ``model_channels`` in improved-diffusion).
        channel_mult: width multipliers per resolution level; its length is the number of levels.
        num_res_blocks: blocks per level on the way down (the way up has one more with "block" skips).
        attention_resolutions: resolutions, in pixels of a square ``image_size`` input, whose levels get
            self-attention, e.g. ``(16,)`` for 32×32 images. Each must be one of the level resolutions.
        image_size: the training resolution; it only places the attention layers (other sizes run too).
        num_heads / head_channels: attention heads; ``head_channels > 0`` fixes the width per head instead
            (``-1``: use ``num_heads``).
        dropout: dropout before the second convolution of every residual block (Ho et al.: 0.1 on CIFAR-10).
        norm_groups, norm_eps: GroupNorm groups and epsilon (Ho et al.: 32 groups, eps 1e-6 as in their TF code).
        activation: ``"silu"`` (Swish, Ho et al.) or ``"relu"``.
        time_embed_dim: width of the time (and class) embedding; ``None`` → ``4 * base_channels``.
        use_scale_shift_norm: AdaGN (Nichol & Dhariwal 2021): the time embedding gives a scale and a shift
            applied after the second GroupNorm instead of a bias added before it.
        resblock_updown: BigGAN-style residual blocks (avg-pool / nearest inside the block) do the
            down/upsampling instead of ``downsample`` / ``upsample``.
        num_classes: ``None`` or the number of classes; the class embedding (``num_classes + 1`` rows, the last
            one the null label of classifier-free guidance) is added to the time embedding.
        patch_size: ``p > 1`` folds each p×p patch of pixels into channels before the input conv
            (``pixel_unshuffle``) and unfolds the output conv's ``out_channels·p²`` channels back
            (``pixel_shuffle``), so level 0 works at ``image_size / p`` (the patching of Hoogeboom et al. 2023,
            "simple diffusion", §3.1, and of DiT): about p² times less computation at the finest level.

    Time embedding
        sinusoidal_dim: width of the sinusoidal features (``None`` → ``base_channels``).
        time_flip_sin_to_cos, time_freq_shift: ``[sin, cos]`` order with frequencies
            ``exp(-ln(10000)·i / (half - shift))``; Ho et al. use ``False, 1``, improved-diffusion ``True, 0``.
        time_mlp: ``Linear → act → Linear`` after the sinusoid (all DDPM networks); ``False`` feeds the
            sinusoidal features to the blocks directly (then ``time_embed_dim`` must be ``None`` or equal
            ``sinusoidal_dim``).
        time_conditioning: ``"all"`` blocks see the time embedding, or only the ``"mid"`` (bottleneck) blocks.

    Architecture options (for the seed networks)
        block: ``"resnet"`` (wide-ResNet block) or ``"conv"`` (plain ``Conv3×3 → [GN] → +t → act``).
        norm: ``"group"`` or ``"none"``.
        skip_connections: ``"block"``: a skip after the input conv, every block and every downsampling, and
            ``num_res_blocks + 1`` decoder blocks per level, downsampling after all levels but the last
            (Ho et al., improved-diffusion, diffusers); ``"level"``: one skip per level, downsampling after
            every level, upsample → concatenate → ``num_res_blocks`` blocks (the seed tutorials).
        decoder_channels: with "level" skips, ``"finer"`` makes the last decoder block of level ``i`` output
            the width of level ``i - 1`` (the lesson's and the report's networks); ``"level"`` keeps level ``i``'s.
        downsample: ``"conv"`` (3×3 stride 2), ``"conv4x4"`` (4×4 stride 2), ``"maxpool"``, ``"avgpool"``.
        downsample_padding: for ``"conv"``: ``"tf_same"`` (TensorFlow 'SAME': pad right/bottom by one on even
            sizes, as Ho et al.'s code and diffusers' ``downsample_padding=0``) or ``"symmetric"`` (padding 1).
        upsample: ``"nearest_conv"`` (nearest ×2 then 3×3 conv), ``"transposed"`` (ConvTranspose 4×4 stride 2),
            ``"nearest"`` (no parameters).
        mid_channel_mult: widths of the bottleneck blocks in units of ``base_channels`` (``None`` → two blocks
            of the last level's width, Ho et al.); e.g. ``(4, 4, 2)`` for the report's 256→512→512→256 bottleneck.
        mid_attention: self-attention after the first bottleneck block (Ho et al.: res, attn, res).
        attention_gate: ``x + γ·Attn(x)`` with a scalar γ initialised at 0 and no output projection (the paper's
            SAGAN-style layer) instead of ``x + proj(Attn(x))``.
        input_conv: a 3×3 input convolution to ``base_channels``; ``False`` lets the first block read the image
            (plain "conv" blocks with "level" skips only).
        input_skip: concatenate the input image to the features before the output convolution.
        out_norm_act: GroupNorm + act before the output convolution; out_kernel_size: 3 or 1.
        zero_init: zero-initialise the last layer of every residual branch (second conv, attention projection)
            and the output conv (Ho et al.'s ``init_scale=0``, improved-diffusion's ``zero_module``).
        weight_init: ``"ho"`` (Xavier/fan-avg uniform weights, zero biases, as Ho et al.'s TF code) or
            ``"torch"`` (PyTorch's defaults).
    """

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    image_size: int = 32
    num_heads: int = 1
    head_channels: int = -1
    dropout: float = 0.1
    norm_groups: int = 32
    norm_eps: float = 1e-6
    activation: str = "silu"
    time_embed_dim: int | None = None
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    num_classes: int | None = None
    patch_size: int = 1
    # time embedding
    sinusoidal_dim: int | None = None
    time_flip_sin_to_cos: bool = False
    time_freq_shift: float = 1.0
    time_mlp: bool = True
    time_conditioning: str = "all"
    # architecture options
    block: str = "resnet"
    norm: str = "group"
    skip_connections: str = "block"
    decoder_channels: str = "level"
    downsample: str = "conv"
    downsample_padding: str = "tf_same"
    upsample: str = "nearest_conv"
    mid_channel_mult: tuple[int, ...] | None = None
    mid_attention: bool = True
    attention_gate: bool = False
    input_conv: bool = True
    input_skip: bool = False
    out_norm_act: bool = True
    out_kernel_size: int = 3
    zero_init: bool = True
    weight_init: str = "ho"

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) for the tuple fields; keep the dataclass hashable.
        for name in ("channel_mult", "attention_resolutions", "mid_channel_mult"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ValueError(f"UNetConfig.{name} {why}, got {getattr(self, name)!r}")

        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(name, "must be a positive int")

        def choice(name: str, options: tuple[str, ...]) -> None:
            if getattr(self, name) not in options:
                fail(name, f"must be one of {options}")

        for name in ("in_channels", "out_channels", "base_channels", "num_res_blocks", "image_size", "patch_size"):
            positive_int(name)
        for name in ("channel_mult", "mid_channel_mult"):
            mult = getattr(self, name)
            if mult is None and name == "mid_channel_mult":
                continue
            if not isinstance(mult, tuple) or not mult:
                fail(name, "must be a non-empty tuple of positive ints")
            if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mult):
                fail(name, "must be a non-empty tuple of positive ints")
        if not isinstance(self.attention_resolutions, tuple):
            fail("attention_resolutions", "must be a tuple of ints (pixels)")
        levels = self.level_resolutions
        for r in self.attention_resolutions:
            if r not in levels:
                fail("attention_resolutions", f"must only hold level resolutions {levels} of image_size")
        positive_int("num_heads")
        if self.head_channels != -1 and (not isinstance(self.head_channels, int) or self.head_channels < 1):
            fail("head_channels", "must be -1 (use num_heads) or a positive int")
        if not 0.0 <= self.dropout < 1.0:
            fail("dropout", "must be in [0, 1)")
        positive_int("norm_groups")
        if not self.norm_eps > 0:
            fail("norm_eps", "must be > 0")
        choice("activation", _ACTIVATIONS)
        if self.time_embed_dim is not None:
            positive_int("time_embed_dim")
        if self.num_classes is not None:
            positive_int("num_classes")
        if self.sinusoidal_dim is not None:
            positive_int("sinusoidal_dim")
        half = self.sinusoid_channels // 2
        if half < 1 or half - self.time_freq_shift <= 0:
            fail("sinusoidal_dim", f"is too small for time_freq_shift={self.time_freq_shift}")
        choice("time_conditioning", _TIME_CONDITIONING)
        choice("block", _BLOCKS)
        choice("norm", _NORMS)
        choice("skip_connections", _SKIPS)
        choice("decoder_channels", _DECODER_CHANNELS)
        choice("downsample", _DOWNSAMPLES)
        choice("downsample_padding", _DOWNSAMPLE_PADDINGS)
        choice("upsample", _UPSAMPLES)
        choice("weight_init", _WEIGHT_INITS)
        if self.out_kernel_size not in (1, 3):
            fail("out_kernel_size", "must be 1 or 3")
        # combinations
        if not self.time_mlp and self.time_embed_dim not in (None, self.sinusoid_channels):
            fail("time_embed_dim", "must be None or equal sinusoidal_dim when time_mlp=False")
        if self.block != "resnet" and self.use_scale_shift_norm:
            fail("use_scale_shift_norm", 'needs block="resnet"')
        if self.block != "resnet" and self.resblock_updown:
            fail("resblock_updown", 'needs block="resnet"')
        if self.decoder_channels == "finer" and self.skip_connections != "level":
            fail("decoder_channels", '"finer" needs skip_connections="level"')
        if not self.input_conv and (self.block != "conv" or self.skip_connections != "level"):
            fail("input_conv", 'may only be False with block="conv" and skip_connections="level"')
        if self.norm == "group":
            for width in (*self.channels, *self.mid_channels):
                if width % self.norm_groups:
                    fail(
                        "norm_groups",
                        f"must divide every channel width {(*self.channels, *self.mid_channels)}",
                    )
        for width in self.attention_channels:
            if self.head_channels > 0 and width % self.head_channels:
                fail("head_channels", f"must divide the attention widths {self.attention_channels}")
            if self.head_channels == -1 and width % self.num_heads:
                fail("num_heads", f"must divide the attention widths {self.attention_channels}")

    # ------------------------------------------------------------------ derived quantities
    @property
    def channels(self) -> tuple[int, ...]:
        """Width of each resolution level, finest first."""
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def mid_channels(self) -> tuple[int, ...]:
        """Output width of each bottleneck block."""
        mult = self.mid_channel_mult or (self.channel_mult[-1],) * 2
        return tuple(self.base_channels * m for m in mult)

    @property
    def level_resolutions(self) -> tuple[int, ...]:
        """Spatial size of each level for an ``image_size`` input (``image_size / patch_size`` with ceiling at
        level 0, then halving with ceiling)."""
        sizes, r = [], -(-self.image_size // self.patch_size)
        for _ in self.channel_mult:
            sizes.append(r)
            r = -(-r // 2)
        return tuple(sizes)

    @property
    def sinusoid_channels(self) -> int:
        return self.sinusoidal_dim if self.sinusoidal_dim is not None else self.base_channels

    @property
    def embed_channels(self) -> int:
        """Width of the embedding the blocks receive (time MLP output, or the sinusoid without an MLP)."""
        if not self.time_mlp:
            return self.sinusoid_channels
        return self.time_embed_dim if self.time_embed_dim is not None else 4 * self.base_channels

    @property
    def attention_channels(self) -> tuple[int, ...]:
        """Widths of every attention layer, in construction order."""
        chs, res, widths = self.channels, self.level_resolutions, []
        for i, c in enumerate(chs):
            if res[i] in self.attention_resolutions:
                widths.append(c)
        if self.mid_attention:
            widths.append(self.mid_channels[0])
        for i in reversed(range(len(chs))):
            if res[i] in self.attention_resolutions:
                finer = self.decoder_channels == "finer" and i > 0
                widths.append(chs[i - 1] if finer else chs[i])
        return tuple(widths)

    def heads(self, channels: int) -> int:
        """Number of attention heads for a layer of ``channels`` channels."""
        return channels // self.head_channels if self.head_channels > 0 else self.num_heads

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown UNetConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**dict(data))


# ====================================================================== building blocks


def _activation(name: str) -> nn.Module:
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

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
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
        if self.linear_1 is not None:
            emb = self.linear_2(self.act(self.linear_1(emb)))
        return emb


def _resample(x: Tensor, mode: str, size: tuple[int, int] | None) -> Tensor:
    """Parameter-free ×½ (average pool, ceiling) or ×2 (nearest, to ``size``) used by BigGAN-style blocks."""
    if mode == "down":
        return F.avg_pool2d(x, 2, ceil_mode=True)
    return F.interpolate(
        x, size=size if size is not None else (2 * x.shape[-2], 2 * x.shape[-1]), mode="nearest"
    )


def _dropout(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)``; for an ``nn.Dropout`` training on the CPU, the same dropout from a ``torch.rand`` mask.

    Keep with probability ``1 − p`` and scale by ``1 / (1 − p)``, as ``F.dropout``; on the CPU ``bernoulli_``
    costs about twice ``rand`` (12 vs 5.5 ns per element here), which made dropout ~4% of a training step.
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
        updown: str | None = None,
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
    flash-attention CPU kernel (≈5× forward, ≈2.5× forward+backward at L = 256, d = 256), so they are used there
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

    def __init__(self, channels: int, kind: str, padding: str = "symmetric"):
        super().__init__()
        self.kind, self.tf_same = kind, kind == "conv" and padding == "tf_same"
        self.conv: nn.Conv2d | None = None
        if kind == "conv":
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if self.tf_same else 1)
        elif kind == "conv4x4":
            self.conv = nn.Conv2d(channels, channels, 4, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "maxpool":
            return F.max_pool2d(x, 2, ceil_mode=True)
        if self.kind == "avgpool":
            return F.avg_pool2d(x, 2, ceil_mode=True)
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

    def __init__(self, channels: int, kind: str):
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
        if self.kind == "transposed":
            x = self.conv(x)
            if tuple(x.shape[-2:]) != tuple(size):
                x = x[..., : size[0], : size[1]]
            return x
        if self.kind == "nearest_conv" and tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1]):
            # Nearest ×2 then a 3×3 conv equals a 4×4 stride-2 transposed conv at the low resolution: each
            # output pixel sees 2×2 input pixels, with the 3×3 taps that land on the same one summed. 4/9 of the
            # multiply-adds and no upsampled intermediate (about 2× faster on CPU). The kernel is derived in float32
            # each call (~1 ms), so it follows the weights; autocast then casts it like any conv weight.
            conv = self.conv
            assert isinstance(conv, nn.Conv2d)
            return F.conv_transpose2d(x, _subpixel_weight(conv.weight), conv.bias, stride=2, padding=1)
        x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x) if self.conv is not None else x


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
            zero = [self.conv_out]
            for m in self.modules():
                if isinstance(m, ResBlock):
                    zero.append(m.conv2)
                elif isinstance(m, AttentionBlock) and m.proj_out is not None:
                    zero.append(m.proj_out)
            for layer in zero:
                nn.init.zeros_(layer.weight)
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

        if self.config.skip_connections == "block":
            skips = [h]
            for level in self.down:
                for j, block in enumerate(level.blocks):
                    h = block(h, level_emb)
                    if level.attns:
                        h = level.attns[j](h)
                    skips.append(h)
                if level.downsample is not None:
                    h = self._resample(level.downsample, h, level_emb, None)
                    skips.append(h)
            h = self.mid(h, emb)
            for level in self.up:
                for j, block in enumerate(level.blocks):
                    h = block(torch.cat([h, skips.pop()], dim=1), level_emb)
                    if level.attns:
                        h = level.attns[j](h)
                if level.upsample is not None:
                    h = self._resample(level.upsample, h, level_emb, tuple(skips[-1].shape[-2:]))
        else:
            skips = []
            for level in self.down:
                for block in level.blocks:
                    h = block(h, level_emb)
                if level.attns:
                    h = level.attns[0](h)
                skips.append(h)
                h = self._resample(level.downsample, h, level_emb, None)
            h = self.mid(h, emb)
            for level in self.up:
                skip = skips.pop()
                h = self._resample(level.upsample, h, level_emb, tuple(skip.shape[-2:]))
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
