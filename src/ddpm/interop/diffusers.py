"""Weight and config conversion between :class:`ddpm.nn.unet.UNet` and diffusers' ``UNet2DModel``.

The module trees correspond one-to-one (``ddpm-cifar10`` ↔ ``google/ddpm-cifar10-32``); parameters are renamed,
except that diffusers' separate ``to_q``/``to_k``/``to_v`` projections are our fused ``qkv`` (concatenated
along the output dimension). diffusers itself is not imported here: state dicts and config dicts are plain
Python objects, so this module works without diffusers installed.

:func:`import_diffusers` / :func:`export_diffusers` turn a diffusers model folder (``unet/`` + ``scheduler/``, as
``DDPMPipeline.save_pretrained`` writes it) into a ddpm run directory and back; the scheduler config maps onto
:class:`ddpm.config.DiffusionConfig` (:func:`diffusion_config_from_scheduler`).

Supported: "block" skips, ResNet blocks with GroupNorm, conv or BigGAN-style (``resblock_updown``) resampling,
nearest+conv upsampling, default or scale-shift time conditioning, attention with one width per head,
class embeddings. Class labels: diffusers has no null label, so our ``num_classes + 1``-row table is exported
as ``num_class_embeds = num_classes + 1`` (the last class is our null label) and imported the same way.

Longer than ~400 lines on purpose: both directions of one mapping (weights, network config, scheduler config)
kept side by side, so that a change to one is seen beside the other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from ..config import DataConfig, DiffusionConfig
from ..nn.unet import UNetConfig

__all__ = [
    "unet_from_diffusers_state_dict",
    "unet_to_diffusers_state_dict",
    "unet_config_to_diffusers",
    "unet_config_from_diffusers",
    "diffusion_config_from_scheduler",
    "scheduler_config_from_diffusion",
    "import_diffusers",
    "export_diffusers",
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
        "patch_size must be 1": c.patch_size == 1,
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


# ============================================================================================== folders
# A diffusers model folder (what ``DDPMPipeline.save_pretrained`` writes) ↔ a ddpm run directory.

_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_VARIANCES = {  # the *_log variants are the same variance computed in log space
    "fixed_small": "fixed_small",
    "fixed_small_log": "fixed_small",
    "fixed_large": "fixed_large",
    "fixed_large_log": "fixed_large",
    "learned_range": "learned_range",
}
_SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine"}
_COSINE_S = 0.008  # diffusers' squaredcos_cap_v2 fixes Nichol & Dhariwal's offset s
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def diffusion_config_from_scheduler(config: Mapping[str, Any]) -> tuple[DiffusionConfig, bool]:
    """``(DiffusionConfig, clip_sample)`` for a diffusers scheduler config (``scheduler/scheduler_config.json``).

    Reads the training noise process: ``num_train_timesteps``, ``beta_schedule`` (``linear`` with
    ``beta_start``/``beta_end``, or ``squaredcos_cap_v2`` = our cosine schedule), ``prediction_type``
    (``epsilon``/``sample``/``v_prediction`` → ``eps``/``x0``/``v``) and ``variance_type`` (``fixed_small[_log]``,
    ``fixed_large[_log]``, ``learned_range``; absent — e.g. DDIM — means ``fixed_small``). Settings with no
    equivalent here (``trained_betas``, ``scaled_linear`` and other schedules, ``learned`` variances,
    thresholding, zero-terminal-SNR rescaling, a clip range other than 1) raise ``ValueError``. Inference-only
    settings (``timestep_spacing``, ``steps_offset``, …) do not describe the model and are ignored.
    """
    get = config.get
    name = get("_class_name", "scheduler")

    def unsupported(why: str) -> ValueError:
        return ValueError(f"{name}: {why} has no equivalent in ddpm")

    if get("trained_betas") is not None:
        raise unsupported("trained_betas (an explicit beta table)")
    schedule = get("beta_schedule", "linear")
    if schedule not in _SCHEDULES:
        raise unsupported(f"beta_schedule={schedule!r} (supported: {', '.join(_SCHEDULES)})")
    prediction = get("prediction_type", "epsilon")
    if prediction not in _PREDICTIONS:
        raise unsupported(f"prediction_type={prediction!r} (supported: {', '.join(_PREDICTIONS)})")
    variance = get("variance_type") or "fixed_small"
    if variance not in _VARIANCES:
        raise unsupported(f"variance_type={variance!r} (supported: {', '.join(_VARIANCES)})")
    if get("thresholding", False):
        raise unsupported("thresholding=True (dynamic thresholding)")
    if get("rescale_betas_zero_snr", False):
        raise unsupported("rescale_betas_zero_snr=True")
    clip = bool(get("clip_sample", True))
    if clip and float(get("clip_sample_range", 1.0)) != 1.0:
        raise unsupported(f"clip_sample_range={get('clip_sample_range')} (only [-1, 1] clipping)")
    timesteps = get("num_train_timesteps", 1000)
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"{name}: num_train_timesteps must be a positive integer, got {timesteps!r}")
    diffusion = DiffusionConfig(
        schedule=_SCHEDULES[schedule],  # type: ignore[arg-type]
        timesteps=timesteps,
        beta_start=float(get("beta_start", 1e-4)),
        beta_end=float(get("beta_end", 0.02)),
        cosine_s=_COSINE_S,
        prediction=_PREDICTIONS[prediction],  # type: ignore[arg-type]
        variance=_VARIANCES[variance],  # type: ignore[arg-type]
        loss="hybrid" if variance == "learned_range" else "mse",
    )
    return diffusion, clip


def scheduler_config_from_diffusion(diffusion: DiffusionConfig, clip_sample: bool = True) -> dict[str, Any]:
    """The ``DDPMScheduler`` config (``scheduler_config.json`` content) of a :class:`DiffusionConfig`."""
    if diffusion.schedule == "cosine" and abs(diffusion.cosine_s - _COSINE_S) > 1e-12:
        raise ValueError(
            f"diffusion.cosine_s={diffusion.cosine_s}: diffusers' squaredcos_cap_v2 schedule fixes s={_COSINE_S}"
        )
    prediction = {v: k for k, v in _PREDICTIONS.items()}[diffusion.prediction]
    return {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": _diffusers_version(),
        "num_train_timesteps": diffusion.timesteps,
        "beta_start": diffusion.beta_start,
        "beta_end": diffusion.beta_end,
        "beta_schedule": {v: k for k, v in _SCHEDULES.items()}[diffusion.schedule],
        "trained_betas": None,
        "variance_type": diffusion.variance,
        "clip_sample": bool(clip_sample),
        "clip_sample_range": 1.0,
        "prediction_type": prediction,
        "thresholding": False,
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }


def _diffusers_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffusers")
    except PackageNotFoundError:
        return "0.30.0"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path} not found (expected a diffusers folder with unet/ and scheduler/)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _read_unet_weights(unet_dir: Path) -> dict[str, Tensor]:
    """``unet/diffusion_pytorch_model.safetensors`` (or its sharded index), else the ``.bin`` file loaded with
    ``torch.load(weights_only=True)`` (no code runs either way)."""
    import torch
    from safetensors.torch import load_file

    st = unet_dir / _WEIGHT_FILES[0]
    if st.is_file():
        return load_file(str(st), device="cpu")
    index = unet_dir / (_WEIGHT_FILES[0] + ".index.json")
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        out: dict[str, Tensor] = {}
        for shard in shards:
            out.update(load_file(str(unet_dir / shard), device="cpu"))
        return out
    binary = unet_dir / _WEIGHT_FILES[1]
    if binary.is_file():
        try:
            state = torch.load(binary, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - an unsafe or corrupt pickle: one clear line
            raise ValueError(
                f"refusing {binary}: not a plain weights-only state dict ({type(e).__name__})"
            ) from None
        if not isinstance(state, dict):
            raise ValueError(f"{binary}: expected a state dict, got {type(state).__name__}")
        return state
    raise ValueError(f"no weights in {unet_dir} (expected {' or '.join(_WEIGHT_FILES)})")


def _data_config_for(unet: UNetConfig) -> DataConfig:
    """The dataset an imported network most likely belongs to (it only matters for training further)."""
    size, c = unet.image_size, unet.in_channels
    name = "cifar10" if (c, size) == (3, 32) else "mnist" if (c, size) == (1, 32) else "folder"
    return DataConfig(name=name, image_size=size)


def import_diffusers(src: str | Path, out_run_dir: str | Path, step: int = 0) -> Path:
    """Import a diffusers ``UNet2DModel`` + scheduler folder as a ddpm run directory; returns the checkpoint.

    ``src`` holds ``unet/config.json`` with ``unet/diffusion_pytorch_model.safetensors`` (or a ``.bin``, read with
    ``torch.load(weights_only=True)``) and ``scheduler/scheduler_config.json`` — e.g. a local copy of
    google/ddpm-cifar10-32. ``out_run_dir`` receives ``config.json`` and ``checkpoints/step-NNNNNNN/`` (written by
    :func:`ddpm.checkpoint.save_checkpoint`; the weights as both the model and the EMA — diffusers folders ship
    one set, usually the EMA), so ``ddpm.pipeline.load_model`` and ``ddpm sample --run`` take it, and
    ``ddpm train --resume`` fine-tunes it. Unsupported architectures or scheduler settings raise ``ValueError``.
    """
    from ..checkpoint import latest_checkpoint, load_weights_into, save_checkpoint
    from ..config import Config, SampleConfig, config_to_dict
    from ..nn.unet import UNet

    src, out = Path(src), Path(out_run_dir)
    unet_raw = _read_json(src / "unet" / "config.json")
    if unet_raw.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"{src}/unet is a {unet_raw['_class_name']}, not a UNet2DModel")
    sched_raw = _read_json(src / "scheduler" / "scheduler_config.json")
    unet_cfg = unet_config_from_diffusers(unet_raw)
    diffusion, clip = diffusion_config_from_scheduler(sched_raw)
    from ..builders import build_diffusion

    expected = build_diffusion(diffusion).output_channels(unet_cfg.in_channels)
    if unet_cfg.out_channels != expected:
        raise ValueError(
            f"the UNet outputs {unet_cfg.out_channels} channels but variance_type={sched_raw.get('variance_type')!r} "
            f"needs {expected} for {unet_cfg.in_channels}-channel images"
        )
    weights = unet_from_diffusers_state_dict(_read_unet_weights(src / "unet"), unet_cfg)
    model = UNet(unet_cfg)
    load_weights_into(model, weights, f"{src}/unet weights")  # every parameter present, every shape right
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = Config(
        model=unet_cfg,
        diffusion=diffusion,
        data=_data_config_for(unet_cfg),
        sample=SampleConfig(clip_denoised=clip),
        preset="",
        source=f"diffusers:{src.resolve()}",
    )
    if latest_checkpoint(out / "checkpoints") is not None:
        raise ValueError(f"{out} already holds checkpoints; import into a new directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config_to_dict(config), indent=2))
    return save_checkpoint(out / "checkpoints", step, config, state, state)


def export_diffusers(run_dir_or_ckpt: str | Path, out_dir: str | Path, ema: bool = True) -> Path:
    """Write a run's (EMA by default) network as a folder ``diffusers.DDPMPipeline.from_pretrained`` loads.

    ``out_dir`` gets ``model_index.json``, ``unet/`` (``config.json`` + ``diffusion_pytorch_model.safetensors``)
    and ``scheduler/scheduler_config.json`` (a ``DDPMScheduler`` with the run's schedule, prediction and
    variance). It must not exist or be empty; the folder is assembled next to it and renamed into place.
    Networks or schedules diffusers cannot express raise ``ValueError``.
    """
    import os
    import shutil
    import tempfile

    from safetensors.torch import save_file

    from ..checkpoint import load_checkpoint

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty directory")
    ck = load_checkpoint(run_dir_or_ckpt, with_state=False)
    weights = ck.ema if ema and ck.ema is not None else ck.model
    unet_cfg = {
        "_class_name": "UNet2DModel",
        "_diffusers_version": _diffusers_version(),
        **unet_config_to_diffusers(ck.config.model),
    }
    sched_cfg = scheduler_config_from_diffusion(ck.config.diffusion, ck.config.sample.clip_denoised)
    state = {k: v.detach().to("cpu").contiguous() for k, v in unet_to_diffusers_state_dict(weights).items()}
    index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": _diffusers_version(),
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "unet").mkdir()
        (tmp / "scheduler").mkdir()
        save_file(state, str(tmp / "unet" / _WEIGHT_FILES[0]), metadata={"format": "pt"})
        (tmp / "unet" / "config.json").write_text(json.dumps(unet_cfg, indent=2))
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched_cfg, indent=2))
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
