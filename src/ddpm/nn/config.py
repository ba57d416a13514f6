"""The hyper-parameters of the U-Net: :class:`UNetConfig`, its validation and derived quantities.

This module owns the configuration schema of :class:`ddpm.nn.unet.UNet` and nothing else: which options exist,
which values each may take, the checks a value must pass, and the quantities derived from them (level widths and
resolutions, embedding and attention widths). The networks built from it live in :mod:`ddpm.nn.blocks` and
:mod:`ddpm.nn.unet`; named configurations in :mod:`ddpm.nn.presets`.

The option values are ``Literal`` types (one source of truth): the field annotations use them, so the
``--set`` coercion of :mod:`ddpm.config` checks values against them, and the tuples ``__post_init__``
validates against are derived from them with ``typing.get_args``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = [
    "UNetConfig",
    "Activation",
    "Norm",
    "BlockKind",
    "DownsampleKind",
    "DownsamplePadding",
    "UpsampleKind",
    "SkipConnections",
    "DecoderChannels",
    "TimeConditioning",
    "WeightInit",
]

Activation = Literal["silu", "relu"]
Norm = Literal["group", "none"]
BlockKind = Literal["resnet", "conv"]
DownsampleKind = Literal["conv", "conv4x4", "maxpool", "avgpool"]
DownsamplePadding = Literal["tf_same", "symmetric"]
UpsampleKind = Literal["nearest_conv", "transposed", "nearest"]
SkipConnections = Literal["block", "level"]
DecoderChannels = Literal["level", "finer"]
TimeConditioning = Literal["all", "mid"]
WeightInit = Literal["ho", "torch"]

_ACTIVATIONS: tuple[str, ...] = get_args(Activation)
_NORMS: tuple[str, ...] = get_args(Norm)
_BLOCKS: tuple[str, ...] = get_args(BlockKind)
_DOWNSAMPLES: tuple[str, ...] = get_args(DownsampleKind)
_DOWNSAMPLE_PADDINGS: tuple[str, ...] = get_args(DownsamplePadding)
_UPSAMPLES: tuple[str, ...] = get_args(UpsampleKind)
_SKIPS: tuple[str, ...] = get_args(SkipConnections)
_DECODER_CHANNELS: tuple[str, ...] = get_args(DecoderChannels)
_TIME_CONDITIONING: tuple[str, ...] = get_args(TimeConditioning)
_WEIGHT_INITS: tuple[str, ...] = get_args(WeightInit)


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of :class:`~ddpm.nn.unet.UNet`. The defaults are Ho et al. 2020's CIFAR-10 network
    (35.7 M parameters).

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
    activation: Activation = "silu"
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
    time_conditioning: TimeConditioning = "all"
    # architecture options
    block: BlockKind = "resnet"
    norm: Norm = "group"
    skip_connections: SkipConnections = "block"
    decoder_channels: DecoderChannels = "level"
    downsample: DownsampleKind = "conv"
    downsample_padding: DownsamplePadding = "tf_same"
    upsample: UpsampleKind = "nearest_conv"
    mid_channel_mult: tuple[int, ...] | None = None
    mid_attention: bool = True
    attention_gate: bool = False
    input_conv: bool = True
    input_skip: bool = False
    out_norm_act: bool = True
    out_kernel_size: int = 3
    zero_init: bool = True
    weight_init: WeightInit = "ho"

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

        for name in (
            "in_channels",
            "out_channels",
            "base_channels",
            "num_res_blocks",
            "image_size",
            "patch_size",
        ):
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
