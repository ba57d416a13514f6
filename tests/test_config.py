"""Config: every preset dry-runs through the CLI with its parameter count, builds a valid network and diffusion,
round-trips through JSON, and says where its numbers come from; `--set` overrides accept good keys and reject
unknown keys, bad values and bad types with one ConfigError line."""

import dataclasses
import json

import pytest
import torch

from ddpm.cli import main
from ddpm.config import (
    PRESETS,
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    get_preset,
    preset_names,
)
from ddpm.nn.presets import unet_config
from ddpm.nn.unet import UNet
from ddpm.train import build_diffusion

SEED_PRESETS = [
    "seed-lesson-mnist",
    "seed-lesson-cifar10",
    "seed-report-cifar10",
    "seed-scratch-mnist",
    "seed-scratch-cifar10",
    "seed-paper-mnist-1",
    "seed-paper-mnist-2",
    "seed-paper-cifar10-1",
    "seed-paper-cifar10-2",
    "seed-paper-cifar10-3",
    "seed-iddpm-cond",
]
IDDPM_PRESETS = ["cifar10-iddpm", "mnist-iddpm", "cifar10-cond", "mnist-cond"]


def _meta_params(model_cfg) -> int:
    """Parameter count without allocating or initialising the weights."""
    with torch.device("meta"):
        return sum(p.numel() for p in UNet(model_cfg).parameters())


def test_the_issue_presets_exist():
    names = set(preset_names())
    for name in [*SEED_PRESETS, *IDDPM_PRESETS, "tiny", "demo", "mnist-cpu", "mnist", "cifar10-ddpm"]:
        assert name in names


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_dry_run(name, capsys):
    assert main(["train", "--preset", name, "--dry-run"]) == 0
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("parameters: ")
    shown = config_from_dict(json.loads(out[: out.rindex("}") + 1]))
    assert int(last.split()[-1].replace(",", "")) == _meta_params(shown.model)
    assert shown.preset == get_preset(name).preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_is_consistent(name):
    cfg = get_preset(name)
    assert cfg.preset and len(cfg.source) > 40, "every preset says where its numbers come from"
    assert PRESETS[name].__doc__ == cfg.source
    diffusion = build_diffusion(cfg.diffusion)  # the diffusion options are valid together
    # The network as written already has the channels its diffusion needs (before the data resolves them).
    assert cfg.model.out_channels == diffusion.output_channels(cfg.model.in_channels)
    tc = cfg.train
    assert tc.batch_size % tc.grad_accum == 0
    assert tc.max_steps is not None or tc.epochs is not None or tc.max_minutes is not None
    if cfg.model.num_classes is None:
        assert cfg.sample.guidance == 0


def test_dry_run_counts_match_the_unet_presets():
    # The contract network, and presets that use a named U-Net unchanged.
    assert _meta_params(get_preset("cifar10-ddpm").model) == 35_746_307
    assert get_preset("cifar10-iddpm").model == unet_config("iddpm-cifar10")
    assert get_preset("seed-iddpm-cond").model == unet_config("seed-iddpm-cond")
    assert get_preset("seed-lesson-mnist").model == unet_config("lesson-mnist")
    assert get_preset("seed-paper-cifar10-3").model == unet_config("paper-cifar10-3")


def test_seed_presets_carry_the_published_numbers():
    rep = get_preset("seed-report-cifar10")
    assert (rep.train.epochs, rep.train.lr, rep.train.weight_decay, rep.train.ema_decay) == (
        300,
        2e-4,
        1e-4,
        0.9999,
    )
    assert rep.train.batch_size == 128 and rep.diffusion.schedule == "linear"
    for name in ("seed-scratch-mnist", "seed-scratch-cifar10"):
        c = get_preset(name)
        assert c.train.batch_size // c.train.grad_accum == 2 and c.train.grad_accum == 64
        assert c.diffusion.schedule == "cosine" and c.train.lr == 1e-4 and c.train.precision != "fp32"
    for name in ("seed-paper-mnist-1", "seed-paper-mnist-2"):
        c = get_preset(name)
        assert (c.diffusion.timesteps, c.train.epochs, c.train.lr, c.train.weight_decay) == (
            500,
            50,
            1e-3,
            0.0,
        )
        assert c.data.val_fraction == 0.2  # 48k / 12k
    for name, T, patience in (
        ("seed-paper-cifar10-1", 500, None),
        ("seed-paper-cifar10-2", 1000, 10),
        ("seed-paper-cifar10-3", 1000, 13),
    ):
        c = get_preset(name)
        assert (c.diffusion.timesteps, c.train.epochs, c.train.early_stopping_patience) == (T, 60, patience)
    les = get_preset("seed-lesson-mnist")
    assert (les.train.epochs, les.train.lr, les.train.batch_size, les.diffusion.timesteps) == (
        20,
        2e-4,
        128,
        1000,
    )
    cond = get_preset("seed-iddpm-cond")
    assert cond.train.epochs == 150 and cond.model.num_classes == 10
    assert cond.diffusion.schedule == "cosine" and cond.diffusion.prediction == "x0"


def test_iddpm_and_conditional_presets():
    c = get_preset("cifar10-iddpm")
    assert (c.diffusion.schedule, c.diffusion.variance, c.diffusion.loss) == (
        "cosine",
        "learned_range",
        "hybrid",
    )
    m = c.model
    assert (m.num_res_blocks, m.attention_resolutions, m.num_heads) == (3, (16, 8), 4)
    assert m.use_scale_shift_norm and m.resblock_updown
    assert get_preset("mnist-iddpm").diffusion.variance == "learned_range"
    for name in ("cifar10-cond", "mnist-cond"):
        c = get_preset(name)
        assert c.model.num_classes == 10 and c.model.use_scale_shift_norm
        assert 0.1 <= c.train.label_dropout <= 0.2


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_round_trip(name):
    cfg = get_preset(name)
    d = config_to_dict(cfg)
    assert config_from_dict(json.loads(json.dumps(d))) == cfg
    assert config_to_dict(config_from_dict(d)) == d


def test_old_config_without_new_keys_loads_with_defaults():
    d = config_to_dict(get_preset("tiny"))
    del d["diffusion"]["timestep_sampler"]
    assert config_from_dict(d).diffusion.timestep_sampler == "uniform"


def test_config_from_dict_rejects_bad_input():
    d = config_to_dict(get_preset("tiny"))
    with pytest.raises(ConfigError, match="unknown config key train.lrr"):
        config_from_dict({**d, "train": {**d["train"], "lrr": 1}})
    with pytest.raises(ConfigError, match="train.batch_size"):
        config_from_dict({**d, "train": {**d["train"], "batch_size": "many"}})
    with pytest.raises(ConfigError, match="expected a mapping"):
        config_from_dict({**d, "model": [1, 2]})


def test_overrides_accept_good_keys():
    cfg = apply_overrides(
        get_preset("tiny"),
        [
            "train.lr=3e-4",
            "train.batch_size=32",
            "train.grad_clip=none",
            "train.compile=true",
            "model.channel_mult=1,2,2",
            "model.num_classes=10",
            "data.image_size=None",
            "diffusion.timestep_sampler=loss_aware",
            "diffusion.variance=learned_range",
            "diffusion.loss=hybrid",
            "train.lr=1e-4",  # later overrides win
        ],
    )
    assert cfg.train.lr == 1e-4 and cfg.train.batch_size == 32 and cfg.train.grad_clip is None
    assert cfg.train.compile is True and cfg.model.channel_mult == (1, 2, 2) and cfg.model.num_classes == 10
    assert cfg.data.image_size is None and cfg.diffusion.timestep_sampler == "loss_aware"
    assert get_preset("tiny").train.lr == 1e-3, "presets are not mutated"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("foo.bar=1", "unknown config key 'foo.bar'"),
        ("train.lr.x=1", "not a section"),
        ("train=1", "is a section"),
        ("train.lr", "must look like section.key=value"),
        ("diffusion.schedule=quadratic", "not one of"),
        ("diffusion.timestep_sampler=importance", "not one of"),
        ("train.batch_size=abc", "expected an integer"),
        ("train.batch_size=1.5", "expected an integer"),
        ("train.batch_size=true", "expected an integer"),
        ("train.lr=fast", "expected a number"),
        ("train.lr=nan", "finite"),
        ("train.compile=maybe", "expected true or false"),
        ("train.epochs=none", None),  # allowed: optional
        ("model.channel_mult=1,x", "expected an integer"),
        ("model.base_channels=-8", "model.base_channels"),
    ],
)
def test_overrides_reject_bad_keys_values_and_types(override, match):
    if match is None:
        assert apply_overrides(get_preset("tiny"), [override]).train.epochs is None
        return
    with pytest.raises(ConfigError, match=match) as info:
        apply_overrides(get_preset("tiny"), [override])
    assert "\n" not in str(info.value)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        get_preset("nope")
    assert isinstance(get_preset("cifar10"), Config)


def test_overrides_of_one_section_are_validated_together():
    # attention must sit at a level resolution: 14 is one for 28×28 images, not for the preset's 32×32
    with pytest.raises(ConfigError, match="attention_resolutions"):
        apply_overrides(get_preset("mnist"), ["model.attention_resolutions=14"])
    cfg = apply_overrides(
        get_preset("mnist"),
        ["model.attention_resolutions=14", "model.image_size=28", "train.lr=1e-3", "train.lr=3e-3"],
    )
    assert (cfg.model.attention_resolutions, cfg.model.image_size, cfg.train.lr) == ((14,), 28, 3e-3)


# Ho et al. 2020, "Denoising Diffusion Probabilistic Models", CIFAR-10: every hyper-parameter with where it is
# stated. "§4" and "App. B" are the paper; "run_cifar.py" is the defaults of train() in their released
# scripts/run_cifar.py (hojonathanho/diffusion), which the paper defers to for what it does not print.
HO_ET_AL_CIFAR10 = {
    "diffusion.timesteps": (1000, "§4: T = 1000"),
    "diffusion.schedule": ("linear", "§4: β increasing linearly"),
    "diffusion.beta_start": (1e-4, "§4: from β1 = 10⁻⁴"),
    "diffusion.beta_end": (0.02, "§4: to βT = 0.02"),
    "diffusion.prediction": ("eps", "§3.2 eq. 11: the ε-parameterisation"),
    "diffusion.loss": ("mse", "§3.4 eq. 14: L_simple"),
    "diffusion.weighting": ("none", "eq. 14: unweighted"),
    "diffusion.timestep_sampler": ("uniform", "Algorithm 1: t ~ Uniform({1, …, T})"),
    "diffusion.variance": ("fixed_large", "§3.2 σ²_t = β_t; run_cifar.py model_var_type='fixedlarge'"),
    "train.batch_size": (128, "App. B: batch size 128 for CIFAR-10"),
    "train.lr": (2e-4, "App. B: learning rate 2 × 10⁻⁴"),
    "train.weight_decay": (0.0, "run_cifar.py optimizer='adam' (no weight decay)"),
    "train.adam_beta1": (0.9, "run_cifar.py: tf.train.AdamOptimizer defaults"),
    "train.adam_beta2": (0.999, "run_cifar.py: tf.train.AdamOptimizer defaults"),
    "train.adam_eps": (1e-8, "run_cifar.py: tf.train.AdamOptimizer defaults"),
    "train.warmup_steps": (5000, "run_cifar.py warmup=5000"),
    "train.lr_schedule": ("constant", "run_cifar.py: constant after the warm-up"),
    "train.grad_clip": (1.0, "run_cifar.py grad_clip=1."),
    "train.ema_decay": (0.9999, "App. B: EMA decay factor 0.9999"),
    "train.ema_warmup": (False, "App. B: a constant decay (no num_updates warm-up)"),
    "train.max_steps": (800_000, "App. B: 800k steps on CIFAR-10"),
    "train.label_dropout": (0.1, "unused: unconditional"),
    "data.name": ("cifar10", "§4"),
    "data.image_size": (32, "§4: 32 × 32"),
    "data.flip": (True, "App. B: random horizontal flips for CIFAR-10"),
    "model.base_channels": (128, "App. B / run_cifar.py ch=128"),
    "model.channel_mult": ((1, 2, 2, 2), "run_cifar.py ch_mult=(1, 2, 2, 2): four resolutions 32…4"),
    "model.num_res_blocks": (2, "App. B: two convolutional residual blocks per resolution"),
    "model.attention_resolutions": ((16,), "App. B: self-attention at the 16 × 16 resolution"),
    "model.dropout": (0.1, "App. B: dropout 0.1 on CIFAR-10"),
    "model.num_classes": (None, "unconditional"),
    "sample.method": ("ddpm", "Algorithm 2: ancestral sampling"),
    "sample.steps": (None, "Algorithm 2: all T steps"),
    "sample.clip_denoised": (True, "run_cifar.py samples with clip_denoised=True"),
}


def test_cifar10_ddpm_is_ho_et_al_exactly():
    cfg = get_preset("cifar10-ddpm")
    for key, (value, source) in HO_ET_AL_CIFAR10.items():
        section, name = key.split(".")
        got = getattr(getattr(cfg, section), name)
        assert got == value, f"{key} = {got!r}, but Ho et al. use {value!r} ({source})"
    assert _meta_params(cfg.model) == 35_746_307  # App. B: 35.7M parameters
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_learned_range_with_plain_mse_is_refused(capsys):
    """L_simple does not reach Σ: learned_range must be trained with L_vlb (hybrid or vlb)."""
    code = main(["train", "--preset", "tiny", "--dry-run", "--set", "diffusion.variance=learned_range"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "diffusion.loss=hybrid" in err
    for loss in ("hybrid", "vlb"):
        overrides = ["diffusion.variance=learned_range", f"diffusion.loss={loss}", "model.out_channels=2"]
        assert main(["train", "--preset", "tiny", "--dry-run", "--set", *overrides]) == 0
