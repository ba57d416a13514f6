"""Weight and config conversion between :class:`ddpm.nn.unet.UNet` and diffusers' ``UNet2DModel``.

The module trees correspond one-to-one (``ddpm-cifar10`` ↔ ``google/ddpm-cifar10-32``); parameters are renamed,
except that diffusers' separate ``to_q``/``to_k``/``to_v`` projections are our fused ``qkv`` (concatenated
along the output dimension). diffusers itself is not imported here: state dicts and config dicts are plain
Python objects, so this module works without diffusers installed.

Supported: "block" skips, ResNet blocks with GroupNorm, conv or BigGAN-style (``resblock_updown``) resampling,
nearest+conv upsampling, default or scale-shift time conditioning, attention with one width per head,
class embeddings. Class labels: diffusers has no null label, so our ``num_classes + 1``-row table is exported
as ``num_class_embeds = num_classes + 1`` (the last class is our null label) and imported the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from ..nn.unet import UNetConfig

__all__ = [
    "unet_from_diffusers_state_dict",
    "unet_to_diffusers_state_dict",
    "unet_config_to_diffusers",
    "unet_config_from_diffusers",
]

# (ours, diffusers) name fragments; applied to dotted names.
_RESNET = (("time_proj", "time_emb_proj"), ("shortcut", "conv_shortcut"))
_ATTN = (("norm", "group_norm"), ("proj_out", "to_out.0"))
_TOP = (
    ("time_embed.", "time_embedding."),
    ("class_embed.", "class_embedding."),
    ("norm_out.", "conv_norm_out."),
)


def _unsupported(why: str) -> ValueError:
    return ValueError(f"this UNetConfig has no diffusers UNet2DModel equivalent: {why}")


def unet_config_to_diffusers(config: UNetConfig) -> dict[str, Any]:
    """Keyword arguments (``config.json`` content) of the equivalent diffusers ``UNet2DModel``."""
    c = config
    checks = {
        "skip_connections must be 'block'": c.skip_connections == "block",
        "block must be 'resnet'": c.block == "resnet",
        "norm must be 'group'": c.norm == "group",
        # UNet2DModel's time MLP and output head are always SiLU, whatever act_fn says
        "activation must be 'silu'": c.activation == "silu",
        "downsample must be 'conv'": c.resblock_updown or c.downsample == "conv",
        "upsample must be 'nearest_conv'": c.resblock_updown or c.upsample == "nearest_conv",
        "time_mlp must be True and time_conditioning 'all'": c.time_mlp and c.time_conditioning == "all",
        "sinusoidal_dim must equal base_channels * channel_mult[0]": c.sinusoid_channels == c.channels[0],
        "mid_channel_mult must be two blocks of the last level's width": c.mid_channels
        == (c.channels[-1],) * 2,
        "attention_gate, input_skip and input_conv=False are not expressible": not (
            c.attention_gate or c.input_skip or not c.input_conv
        ),
        "the output head must be GroupNorm·act·Conv3×3": c.out_norm_act and c.out_kernel_size == 3,
    }
    failed = [why for why, ok in checks.items() if not ok]
    if failed:
        raise _unsupported("; ".join(failed))
    widths = c.attention_channels
    if c.head_channels > 0:
        head_dim: int | None = c.head_channels
    elif c.num_heads == 1:
        head_dim = None  # diffusers: one head of the full width
    else:
        dims = {w // c.num_heads for w in widths}
        if len(dims) > 1:
            raise _unsupported(
                f"num_heads={c.num_heads} gives head widths {sorted(dims)}; diffusers needs one"
            )
        head_dim = dims.pop() if dims else 8
    res, attn = c.level_resolutions, c.attention_resolutions
    if c.resblock_updown:
        down = ["AttnDownBlock2D" if r in attn else "ResnetDownsampleBlock2D" for r in res]
        up = ["AttnUpBlock2D" if r in attn else "ResnetUpsampleBlock2D" for r in reversed(res)]
    else:
        down = ["AttnDownBlock2D" if r in attn else "DownBlock2D" for r in res]
        up = ["AttnUpBlock2D" if r in attn else "UpBlock2D" for r in reversed(res)]
    return {
        "sample_size": c.image_size,
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "time_embedding_dim": c.embed_channels,
        "freq_shift": int(c.time_freq_shift) if float(c.time_freq_shift).is_integer() else c.time_freq_shift,
        "flip_sin_to_cos": c.time_flip_sin_to_cos,
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": "UNetMidBlock2D",
        "block_out_channels": list(c.channels),
        "layers_per_block": c.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": 0 if c.downsample_padding == "tf_same" else 1,
        "downsample_type": "resnet" if c.resblock_updown else "conv",
        "upsample_type": "resnet" if c.resblock_updown else "conv",
        "dropout": c.dropout,
        "act_fn": c.activation,
        "attention_head_dim": head_dim,
        "norm_num_groups": c.norm_groups,
        "attn_norm_num_groups": c.norm_groups,
        "norm_eps": c.norm_eps,
        "resnet_time_scale_shift": "scale_shift" if c.use_scale_shift_norm else "default",
        "add_attention": c.mid_attention,
        "class_embed_type": None,
        "num_class_embeds": None if c.num_classes is None else c.num_classes + 1,
    }


def unet_config_from_diffusers(config: Mapping[str, Any], **overrides: Any) -> UNetConfig:
    """A :class:`UNetConfig` for a diffusers ``UNet2DModel`` config (e.g. ``unet/config.json``).

    Training-only choices diffusers does not record (``weight_init``, ``zero_init``) keep their defaults;
    ``overrides`` replace any field.
    """
    d = dict(config)
    get = d.get
    if get("time_embedding_type", "positional") != "positional" or get("center_input_sample", False):
        raise ValueError("only positional time embeddings without input centring are supported")
    if get("class_embed_type") is not None:
        raise ValueError(
            f"class_embed_type={get('class_embed_type')!r} is not supported (only an nn.Embedding)"
        )
    if get("mid_block_type", "UNetMidBlock2D") != "UNetMidBlock2D" or get("mid_block_scale_factor", 1) != 1:
        raise ValueError("only the standard UNetMidBlock2D with scale factor 1 is supported")
    block_out = tuple(get("block_out_channels", (224, 448, 672, 896)))
    base = block_out[0]
    if any(ch % base for ch in block_out):
        raise ValueError(f"block_out_channels {block_out} must be multiples of the first one")
    down_types = list(get("down_block_types", ()))
    resnet_updown = any(t.startswith("Resnet") for t in down_types) or get("downsample_type") == "resnet"
    allowed = {"DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D"}
    if set(down_types) - allowed:
        raise ValueError(f"down_block_types {down_types} must be among {sorted(allowed)}")
    mirrored = [t.replace("Down", "Up") for t in reversed(down_types)]
    if list(get("up_block_types", mirrored)) != mirrored:
        raise ValueError(f"up_block_types {get('up_block_types')} must mirror down_block_types ({mirrored})")
    sample = get("sample_size") or 32
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    res = [sample]
    for _ in block_out[1:]:
        res.append(-(-res[-1] // 2))
    attn = tuple(r for r, t in zip(res, down_types, strict=True) if t.startswith("Attn"))
    head_dim = get("attention_head_dim", 8)
    num_classes = get("num_class_embeds")
    kwargs: dict[str, Any] = dict(
        in_channels=get("in_channels", 3),
        out_channels=get("out_channels", 3),
        base_channels=base,
        channel_mult=tuple(ch // base for ch in block_out),
        num_res_blocks=get("layers_per_block", 2),
        attention_resolutions=attn,
        image_size=sample,
        num_heads=1,
        head_channels=-1 if head_dim is None else head_dim,
        dropout=get("dropout", 0.0),
        norm_groups=get("norm_num_groups", 32),
        norm_eps=get("norm_eps", 1e-5),
        activation=get("act_fn", "silu"),
        time_embed_dim=None if get("time_embedding_dim") in (None, 4 * base) else get("time_embedding_dim"),
        use_scale_shift_norm=get("resnet_time_scale_shift", "default") == "scale_shift",
        resblock_updown=resnet_updown,
        num_classes=None if num_classes is None else num_classes - 1,
        sinusoidal_dim=None,  # diffusers' sinusoid has block_out_channels[0] = base channels
        time_flip_sin_to_cos=get("flip_sin_to_cos", True),
        time_freq_shift=float(get("freq_shift", 0)),
        downsample_padding="tf_same" if get("downsample_padding", 1) == 0 else "symmetric",
        mid_attention=get("add_attention", True),
    )
    kwargs.update(overrides)
    return UNetConfig(**kwargs)


def _rename_to_diffusers(name: str) -> str:
    for ours, theirs in _TOP:
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    m = re.match(r"(down|up)\.(\d+)\.(blocks|attns|downsample|upsample)\.(.*)$", name)
    if m:
        path, i, part, rest = m.groups()
        prefix = f"{path}_blocks.{i}."
        if part in ("blocks", "attns"):
            j, rest = rest.split(".", 1)
            kind = "resnets" if part == "blocks" else "attentions"
            return prefix + f"{kind}.{j}." + _rename_leaf(rest, part == "attns")
        sampler = "downsamplers" if part == "downsample" else "upsamplers"
        return prefix + f"{sampler}.0." + _rename_leaf(rest, False)
    m = re.match(r"mid\.(blocks\.(\d+)|attn)\.(.*)$", name)
    if m:
        if m.group(2) is not None:
            return f"mid_block.resnets.{m.group(2)}." + _rename_leaf(m.group(3), False)
        return "mid_block.attentions.0." + _rename_leaf(m.group(3), True)
    return name  # conv_in, conv_out


def _rename_leaf(rest: str, attention: bool) -> str:
    for ours, theirs in _ATTN if attention else _RESNET:
        if rest == ours or rest.startswith(ours + "."):
            return theirs + rest[len(ours) :]
    return rest


def unet_to_diffusers_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our ``UNet.state_dict()`` → diffusers ``UNet2DModel`` parameter names (``qkv`` split into q, k, v)."""
    out: dict[str, Tensor] = {}
    for name, value in state_dict.items():
        if name.endswith(".gamma"):
            raise _unsupported("γ-gated attention")
        renamed = _rename_to_diffusers(name)
        m = re.match(r"(.*)\.qkv\.(weight|bias)$", renamed)
        if m:
            for proj, chunk in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0), strict=True):
                out[f"{m.group(1)}.{proj}.{m.group(2)}"] = chunk.clone()
        else:
            out[renamed] = value
    return out


# Names of diffusers < 0.13 checkpoints (e.g. google/ddpm-cifar10-32 as stored), which diffusers renames on load.
_LEGACY_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def unet_from_diffusers_state_dict(state_dict: Mapping[str, Tensor], config: UNetConfig) -> dict[str, Tensor]:
    """diffusers ``UNet2DModel.state_dict()`` → a state dict for ``UNet(config)`` (q, k, v fused into ``qkv``).

    ``config`` must describe the same network (e.g. from :func:`unet_config_from_diffusers`); it is checked to
    be expressible in diffusers, and the result should be loaded with ``strict=True``. Legacy attention names
    (``query``/``key``/``value``/``proj_attn``) are accepted too.
    """
    import torch

    unet_config_to_diffusers(config)  # raises for configs diffusers cannot express
    inverse = _inverse_names(config)
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for name, value in state_dict.items():
        m = re.match(r"(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$", name)
        if m:
            name = f"{m.group(1)}.{_LEGACY_ATTN[m.group(2)]}.{m.group(3)}"
        m = re.match(r"(.*)\.(to_q|to_k|to_v)\.(weight|bias)$", name)
        if m:
            qkv.setdefault(f"{m.group(1)}.qkv.{m.group(3)}", {})[m.group(2)] = value
            continue
        if name not in inverse:
            raise ValueError(f"unexpected diffusers parameter {name!r} for this UNetConfig")
        out[inverse[name]] = value
    for name, parts in qkv.items():
        if set(parts) != {"to_q", "to_k", "to_v"} or name not in inverse:
            raise ValueError(f"incomplete or unexpected attention projections at {name!r}")
        out[inverse[name]] = torch.cat([parts["to_q"], parts["to_k"], parts["to_v"]], dim=0)
    return out


def _inverse_names(config: UNetConfig) -> dict[str, str]:
    """diffusers name → our name for every parameter of ``UNet(config)`` (built on the meta device; our fused
    ``qkv`` appears under its diffusers prefix as ``….qkv.weight``)."""
    import torch

    from ..nn.unet import UNet

    with torch.device("meta"):
        names = list(UNet(config).state_dict())
    return {_rename_to_diffusers(n): n for n in names}
