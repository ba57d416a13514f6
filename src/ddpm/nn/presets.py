"""Named U-Net architectures: ``unet(name, **overrides)``, ``unet_config(name, **overrides)``, ``names()``.

Every preset is a :class:`~ddpm.nn.unet.UNetConfig`; its ``source`` line says where the numbers come from.
The "seed" presets rebuild the networks of the project's founding documents (``shared/seeds``) as options of
the one :class:`~ddpm.nn.unet.UNet`; where a seed is buggy or silent the preset follows the paper it cites and
its source line says so. Parameter counts are for the default channels (``describe(name)`` prints them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .unet import UNet, UNetConfig

__all__ = ["unet", "unet_config", "names", "describe", "source", "PRESET_ALIASES"]


@dataclass(frozen=True)
class _Preset:
    source: str
    config: UNetConfig


# Options shared by the seed networks that use PyTorch's defaults (no zero-init, nn.GroupNorm's eps).
_TORCH_DEFAULTS: dict[str, Any] = dict(weight_init="torch", zero_init=False, norm_eps=1e-5)

# Lesson "5.1 Diffusion Fundamentals", SimpleUNet: conv_in → [Res(64→64), Conv4×4/s2] → [Res(64→128), Conv4×4/s2]
# → Res(128→128) → [ConvT4×4/s2, cat, Res(256→64)] → [ConvT4×4/s2, cat, Res(128→64)] → GN(8)·SiLU·Conv3×3;
# time: sinusoid(256) → Linear → SiLU → Linear(256); GroupNorm(8), no dropout, no attention.
_LESSON: dict[str, Any] = dict(
    base_channels=64,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(),
    mid_channel_mult=(2,),
    mid_attention=False,
    dropout=0.0,
    norm_groups=8,
    sinusoidal_dim=256,
    time_embed_dim=256,
    skip_connections="level",
    decoder_channels="finer",
    downsample="conv4x4",
    upsample="transposed",
    **_TORCH_DEFAULTS,
)

# The paper (Vu Minh & Won 2025, §9.3-9.7): plain Conv3×3→act encoder blocks with pooling, a conv bottleneck
# that alone receives the time embedding, nearest-neighbour upsampling, concatenated skips, a final conv that
# also sees the input image. "Encoder block 3" (no pooling, §9.3 step 3) is the first bottleneck block here.
# Decoder widths are not given; we keep each level's width, which reproduces the quoted ≈66 M of model 3.
_PAPER: dict[str, Any] = dict(
    block="conv",
    norm="none",
    base_channels=32,
    num_res_blocks=1,
    dropout=0.0,
    skip_connections="level",
    decoder_channels="level",
    upsample="nearest",
    input_conv=False,
    input_skip=True,
    out_norm_act=False,
    out_kernel_size=3,
    time_conditioning="mid",
    sinusoidal_dim=128,
    **_TORCH_DEFAULTS,
)
# Diffusion_model_2 (§9.5): an extra encoder/decoder block, SiLU + max-pooling, sinusoid → Linear·SiLU·Linear,
# three γ-gated self-attention layers (§9.6; placed at 8×8 in the encoder, the bottleneck and the decoder, the
# "deeper layers" of §9.6.4 — the paper does not say where).
_PAPER_2: dict[str, Any] = dict(
    _PAPER,
    channel_mult=(1, 2, 4),
    mid_channel_mult=(8, 8),
    activation="silu",
    downsample="maxpool",
    attention_resolutions=(8,),
    mid_attention=True,
    attention_gate=True,
    time_embed_dim=128,
)

# Improved DDPM (Nichol & Dhariwal 2021) CIFAR-10 network, improved-diffusion's UNetModel with its CIFAR flags.
_IDDPM: dict[str, Any] = dict(
    base_channels=128,
    channel_mult=(1, 2, 2, 2),
    num_res_blocks=3,
    attention_resolutions=(16, 8),
    num_heads=4,
    dropout=0.3,
    norm_eps=1e-5,
    use_scale_shift_norm=True,
    resblock_updown=True,
    time_flip_sin_to_cos=True,
    time_freq_shift=0.0,
    downsample_padding="symmetric",
    weight_init="torch",
    zero_init=True,
)

_PRESETS: dict[str, _Preset] = {
    "ddpm-cifar10": _Preset(
        "Ho et al. 2020, App. B / diffusion_tf unet: ch 128, mult (1,2,2,2), 2 res blocks, 1-head attention "
        "at 16×16, dropout 0.1, GN(32, eps 1e-6), SiLU, sinusoid(128)→512; = diffusers google/ddpm-cifar10-32",
        UNetConfig(),  # the defaults are this network
    ),
    "iddpm-cifar10": _Preset(
        "Nichol & Dhariwal 2021 CIFAR-10 (improved-diffusion flags: 128 ch, 3 res blocks, dropout 0.3, learn_sigma, "
        "attention 16,8 with 4 heads, scale-shift norm) + BigGAN up/down blocks of Dhariwal & Nichol 2021",
        UNetConfig(**_IDDPM, out_channels=6),
    ),
    "mnist": _Preset(
        "project default for MNIST (28 or 32 px): Ho et al.'s blocks at 64 ch, mult (1,2,2), attention at 16",
        UNetConfig(
            in_channels=1,
            out_channels=1,
            base_channels=64,
            channel_mult=(1, 2, 2),
            num_res_blocks=2,
            attention_resolutions=(16,),
            num_heads=4,
            dropout=0.1,
        ),
    ),
    "mnist-cpu": _Preset(
        "project default for a 10-minute 2-core CPU budget on MNIST: 32 ch, mult (1,2,2), 1 res block, "
        "4-head attention only at the 8×8 level and the bottleneck, no dropout",
        UNetConfig(
            in_channels=1,
            out_channels=1,
            base_channels=32,
            channel_mult=(1, 2, 2),
            num_res_blocks=1,
            attention_resolutions=(8,),
            num_heads=4,
            dropout=0.0,
            norm_groups=8,
        ),
    ),
    "tiny": _Preset(
        "for tests and smoke runs (45 k params, milliseconds): 8 ch, mult (1,2), 1 res block, 2-head attention at 8",
        UNetConfig(
            in_channels=1,
            out_channels=1,
            base_channels=8,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(8,),
            image_size=16,
            num_heads=2,
            dropout=0.0,
            norm_groups=4,
            time_embed_dim=32,
        ),
    ),
    "tutorial": _Preset(
        "the lesson's SimpleUNet(in_channels=1, base_channels=64, time_dim=256), parameter for parameter",
        UNetConfig(**_LESSON, in_channels=1, out_channels=1),
    ),
    "lesson-cifar10": _Preset(
        "the lesson's CIFAR-10 exercise: SimpleUNet(in_channels=3, base_channels=128, time_dim=256)",
        UNetConfig(**dict(_LESSON, base_channels=128)),
    ),
    "report-cifar10": _Preset(
        "the report's Table 2 / §4.4 U-Net: 128-256-256 levels, 2 res blocks, attention at 16×16 (4 heads) down "
        "and up, 256→512→512→256 bottleneck at 4×4, ConvTranspose upsampling, 1×1 output conv, time MLP 256. "
        "Its code calls nn.Sequential with (x, t) and omits t in the encoder (it cannot run); we condition every "
        "block on t as its §3.3 says. Its attention (LayerNorm + MHA + GELU MLP) is our GN multi-head attention.",
        UNetConfig(
            base_channels=128,
            channel_mult=(1, 2, 2),
            num_res_blocks=2,
            attention_resolutions=(16,),
            num_heads=4,
            dropout=0.1,
            sinusoidal_dim=256,
            time_embed_dim=256,
            skip_connections="level",
            decoder_channels="finer",
            downsample="conv",
            downsample_padding="symmetric",
            upsample="transposed",
            mid_channel_mult=(4, 4, 2),
            mid_attention=False,
            out_norm_act=False,
            out_kernel_size=1,
            **_TORCH_DEFAULTS,
        ),
    ),
    "scratch-mnist": _Preset(
        "the from-scratch guide (img 32, base_ch 128, time_emb_dim 256, scale-and-shift time modulation); it gives "
        "no depth or attention, so those follow Ho et al. (mult (1,2,2,2), 2 res blocks, attention at 16)",
        UNetConfig(in_channels=1, out_channels=1, time_embed_dim=256, use_scale_shift_norm=True),
    ),
    "scratch-cifar10": _Preset(
        "the from-scratch guide's CIFAR-10 run: as scratch-mnist with 3 channels",
        UNetConfig(time_embed_dim=256, use_scale_shift_norm=True),
    ),
    "paper-mnist-1": _Preset(
        "the paper's Diffusion_model_1 (§9.3-9.4): Conv3×3+ReLU blocks 32→64 with 2×2 avg-pooling, conv bottleneck "
        "64→128→128 with a 128-d time embedding (sinusoid, no MLP, its form is unspecified), nearest upsampling, "
        "2 skips + the input image into the last conv",
        UNetConfig(
            **dict(
                _PAPER, channel_mult=(1, 2), mid_channel_mult=(4, 4), activation="relu", downsample="avgpool"
            ),
            in_channels=1,
            out_channels=1,
            attention_resolutions=(),
            mid_attention=False,
            time_mlp=False,
        ),
    ),
    "paper-mnist-2": _Preset(
        "the paper's Diffusion_model_2 (§9.5-9.6, '1.8 M parameters'): 4 encoder blocks 32-64-128-256 with SiLU "
        "and max-pooling, sinusoid → MLP, 3 γ-gated self-attention layers, 4 skip connections",
        UNetConfig(**_PAPER_2, in_channels=1, out_channels=1),
    ),
    "paper-cifar10-1": _Preset(
        "the paper's CIFAR-10_diffusion_model_1 (§9.7): Diffusion_model_2 with RGB input",
        UNetConfig(**_PAPER_2),
    ),
    "paper-cifar10-2": _Preset(
        "the paper's CIFAR-10_diffusion_model_2 (§9.7, 1,852,657 params): + GroupNorm after every conv (8 groups; "
        "count unspecified) and two more attention layers; the paper puts both in the encoder, one attention set "
        "serves both paths here, so we attend at 16 and 8 in the encoder and the decoder (5 layers either way)",
        UNetConfig(**dict(_PAPER_2, norm="group", norm_groups=8, attention_resolutions=(16, 8))),
    ),
    "paper-cifar10-3": _Preset(
        "the paper's CIFAR-10_diffusion_model_3 (§9.7, ≈66 M params): model 2 with every width ×3 (32→96) and an "
        "extra encoder/decoder level, 1536 channels in the bottleneck",
        UNetConfig(
            **dict(
                _PAPER_2,
                norm="group",
                norm_groups=8,
                attention_resolutions=(16, 8),
                base_channels=96,
                channel_mult=(1, 2, 4, 8),
                mid_channel_mult=(16, 16),
            )
        ),
    ),
    "seed-iddpm-cond": _Preset(
        "the Improved-DDPM repo (class-conditional, BigGAN ResBlocks, AdaGN, x0-prediction with fixed variance); it "
        "names MODEL_CHANNELS/CHANNEL_MULTIPLIERS without values, so widths/depth are iDDPM's CIFAR-10 ones",
        UNetConfig(**_IDDPM, out_channels=3, num_classes=10),
    ),
}
_PRESETS["cifar10-cpu"] = _Preset(
    "project default for a 30-minute 2-core CPU budget on CIFAR-10: the mnist-cpu network for 3 channels "
    "(32 ch, mult (1,2,2), 1 res block, 4-head attention at 8×8 and the bottleneck, no dropout)",
    dataclasses.replace(_PRESETS["mnist-cpu"].config, in_channels=3, out_channels=3),
)

PRESET_ALIASES: dict[str, str] = {"lesson-mnist": "tutorial"}


def names() -> list[str]:
    """All preset names (aliases included)."""
    return [*_PRESETS, *PRESET_ALIASES]


def _lookup(name: str) -> _Preset:
    key = PRESET_ALIASES.get(name, name)
    if key not in _PRESETS:
        raise ValueError(f"unknown U-Net preset {name!r}; known presets: {', '.join(names())}")
    return _PRESETS[key]


def source(name: str) -> str:
    """Where a preset's numbers come from (one line)."""
    return _lookup(name).source


def unet_config(name: str, **overrides: Any) -> UNetConfig:
    """The preset's :class:`UNetConfig`, with ``overrides`` replacing fields (e.g. ``in_channels=3``)."""
    config = _lookup(name).config
    if not overrides:
        return config
    fields = {f.name for f in dataclasses.fields(UNetConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown UNetConfig field(s) {unknown}; known fields: {', '.join(sorted(fields))}")
    return dataclasses.replace(config, **overrides)


def unet(name: str, **overrides: Any) -> UNet:
    """Build the preset's :class:`UNet` (freshly initialised)."""
    return UNet(unet_config(name, **overrides))


def describe(name: str) -> str:
    """``name: N params — source`` (builds the network to count its parameters)."""
    return f"{name}: {unet(name).num_parameters():,} params — {source(name)}"
