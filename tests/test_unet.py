"""Tests of the U-Net (ddpm.nn.unet), its presets and the diffusers conversion."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ddpm.interop.diffusers import (
    unet_config_from_diffusers,
    unet_config_to_diffusers,
    unet_from_diffusers_state_dict,
    unet_to_diffusers_state_dict,
)
from ddpm.nn import presets
from ddpm.nn.unet import Downsample, SinusoidalEmbedding, UNet, UNetConfig, Upsample

HO_CIFAR10_PARAMS = 35_746_307  # Ho et al. 2020's CIFAR-10 network = diffusers google/ddpm-cifar10-32

# google/ddpm-cifar10-32's config.json (diffusers 0.0.4 export), written out here on purpose rather than taken
# from our converter, so the count check does not depend on the code under test.
DDPM_CIFAR10_32 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    freq_shift=1,
    flip_sin_to_cos=False,
    norm_eps=1e-6,
    norm_num_groups=32,
    act_fn="silu",
    resnet_time_scale_shift="default",
    attention_head_dim=None,
    downsample_padding=0,
    mid_block_scale_factor=1,
    time_embedding_type="positional",
    center_input_sample=False,
)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# One intra-op thread (conftest): on the shared 2-core CI machine OpenMP threads spin against other processes and a
# 32×32 ddpm-cifar10 forward takes seconds instead of 0.1 s.
pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def ddpm_cifar10() -> UNet:
    torch.manual_seed(0)
    return presets.unet("ddpm-cifar10").eval()


# ---------------------------------------------------------------------------------------------- presets


REQUIRED_PRESETS = [
    "ddpm-cifar10",
    "iddpm-cifar10",
    "mnist",
    "mnist-cpu",
    "tiny",
    "tutorial",
    "lesson-mnist",
    "lesson-cifar10",
    "report-cifar10",
    "scratch-mnist",
    "scratch-cifar10",
    "paper-mnist-1",
    "paper-mnist-2",
    "paper-cifar10-1",
    "paper-cifar10-2",
    "paper-cifar10-3",
    "seed-iddpm-cond",
]


def test_preset_names_and_unknown_name():
    assert set(REQUIRED_PRESETS) <= set(presets.names())
    with pytest.raises(ValueError, match="unknown U-Net preset 'nope'.*ddpm-cifar10.*tiny"):
        presets.unet("nope")
    with pytest.raises(ValueError, match="unknown UNetConfig field"):
        presets.unet_config("tiny", channels=3)
    for name in presets.names():
        assert presets.source(name)  # every preset says where its numbers come from


def test_top_level_alias_module():
    import ddpm.presets

    for alias, target in presets.PRESET_ALIASES.items():
        assert presets.unet_config(alias) == presets.unet_config(target)

    assert ddpm.presets.unet is presets.unet
    assert ddpm.presets.unet_config("ddpm-cifar10") == presets.unet_config("ddpm-cifar10")
    assert {"unet", "unet_config", "names"} <= set(ddpm.presets.__all__)


@pytest.mark.parametrize(
    "name", sorted(set(presets.names()) - {"ddpm-cifar10"} - set(presets.PRESET_ALIASES))
)
def test_preset_output_shapes(name):
    """Every preset at the sizes it supports: 28 and 32 for 1-channel presets, 32 for RGB and the big ones."""
    torch.manual_seed(0)
    model = presets.unet(name).eval()
    cfg = model.config
    params = n_params(model)
    sizes = (28, 32) if cfg.in_channels == 1 and params < 10_000_000 else (32,)
    batch = 1 if params > 1_000_000 else 2
    y = torch.arange(batch) % cfg.num_classes if cfg.num_classes else None
    with torch.no_grad():
        for size in sizes:
            x = torch.randn(batch, cfg.in_channels, size, size)
            out = model(x, torch.randint(0, 1000, (batch,)), y)
            assert out.shape == (batch, cfg.out_channels, size, size)
            assert torch.isfinite(out).all()


def test_ddpm_cifar10_shape_and_parameter_count(ddpm_cifar10):
    assert n_params(ddpm_cifar10) == HO_CIFAR10_PARAMS == ddpm_cifar10.num_parameters()
    assert ddpm_cifar10.config == UNetConfig()  # the defaults are Ho et al.'s CIFAR-10 network
    with torch.no_grad():
        out = ddpm_cifar10(torch.randn(1, 3, 32, 32), torch.tensor([10]))
    assert out.shape == (1, 3, 32, 32)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("tutorial", 1_824_641),  # the lesson's SimpleUNet(1, 64, 256), counted from the lesson's code
        ("lesson-cifar10", 6_668_035),  # SimpleUNet(3, 128, 256)
        ("iddpm-cifar10", 57_094_662),
        ("paper-cifar10-3", 65_134_553),  # the paper quotes "approximately 66 million"
    ],
)
def test_seed_parameter_counts(name, params):
    with torch.device("meta"):
        assert n_params(presets.unet(name)) == params


def test_report_network_matches_report_code_outside_attention():
    # The report's code has 26,363,907 parameters outside its two attention modules (counted from §4.4);
    # its attention (LayerNorm + MHA + MLP) is replaced by ours (GroupNorm + qkv + projection).
    with torch.device("meta"):
        model = presets.unet("report-cifar10")
    outside = sum(p.numel() for name, p in model.named_parameters() if ".attns." not in name)
    assert outside == 26_363_907
    assert [a.heads for a in model.modules() if hasattr(a, "heads")] == [4, 4]


# ---------------------------------------------------------------------------------------------- diffusers


def test_diffusers_ddpm_cifar10_same_count_and_outputs(ddpm_cifar10):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(1)
    ref = diffusers.UNet2DModel(**DDPM_CIFAR10_32).eval()
    assert n_params(ref) == HO_CIFAR10_PARAMS == n_params(ddpm_cifar10)

    # Our converter produces the same diffusers config and the same config back.
    ours_as_diffusers = unet_config_to_diffusers(ddpm_cifar10.config)
    for key, value in DDPM_CIFAR10_32.items():
        got = ours_as_diffusers[key]
        assert (tuple(got) if isinstance(got, list) else got) == value, key
    assert unet_config_from_diffusers(ours_as_diffusers) == ddpm_cifar10.config

    # Random diffusers weights → ours: identical outputs (fp32, CPU, batch 2, 32×32).
    model = UNet(ddpm_cifar10.config).eval()
    model.load_state_dict(unet_from_diffusers_state_dict(ref.state_dict(), model.config), strict=True)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0, 999])
    with torch.no_grad():
        expected = ref(x, t).sample
        got = model(x, t)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    # ... and back: the exported state dict is diffusers' own.
    back = unet_to_diffusers_state_dict(model.state_dict())
    reference = ref.state_dict()
    assert set(back) == set(reference)
    for key, value in reference.items():
        assert torch.equal(back[key], value), key


def test_diffusers_adagn_biggan_multihead_classes_match():
    diffusers = pytest.importorskip("diffusers")
    cfg = UNetConfig(
        base_channels=16,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(8, 4),
        image_size=16,
        num_heads=2,
        norm_groups=8,
        use_scale_shift_norm=True,
        resblock_updown=True,
        num_classes=3,
        time_flip_sin_to_cos=True,
        time_freq_shift=0.0,
        downsample_padding="symmetric",
    )
    torch.manual_seed(2)
    ref = diffusers.UNet2DModel(**unet_config_to_diffusers(cfg)).eval()
    model = UNet(cfg).eval()
    model.load_state_dict(unet_from_diffusers_state_dict(ref.state_dict(), cfg), strict=True)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([5, 700]), torch.tensor([0, 3])  # 3 = our null label
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), ref(x, t, class_labels=y).sample, atol=1e-5, rtol=1e-5)


def test_diffusers_legacy_attention_names(ddpm_cifar10):
    sd = unet_to_diffusers_state_dict(ddpm_cifar10.state_dict())
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, value in sd.items():
        for new, old in legacy.items():
            key = key.replace(f".{new}.", f".{old}.")
        renamed[key] = value
    converted = unet_from_diffusers_state_dict(renamed, ddpm_cifar10.config)
    own = ddpm_cifar10.state_dict()
    assert set(converted) == set(own)
    assert all(torch.equal(converted[k], own[k]) for k in own)


def test_diffusers_rejects_inexpressible_configs():
    for name in ("tutorial", "paper-mnist-2", "report-cifar10"):
        with pytest.raises(ValueError, match="no diffusers UNet2DModel equivalent"):
            unet_config_to_diffusers(presets.unet_config(name))


# ---------------------------------------------------------------------------------------------- time embedding


def test_sinusoidal_embedding_closed_form():
    t = torch.tensor([0, 1, 10, 999])
    # Ho et al. / diffusers (flip_sin_to_cos=False, freq_shift=1): ω_i = 10000^(-i/(h-1)), [sin, cos].
    emb = SinusoidalEmbedding(8, flip_sin_to_cos=False, freq_shift=1)(t)
    for row, tv in zip(emb.tolist(), t.tolist(), strict=True):
        omegas = [10000 ** (-i / 3) for i in range(4)]
        expected = [math.sin(tv * w) for w in omegas] + [math.cos(tv * w) for w in omegas]
        assert row == pytest.approx(expected, abs=2e-4)
    # improved-diffusion (flip_sin_to_cos=True, freq_shift=0): ω_i = 10000^(-i/h), [cos, sin]; odd dim → 0 pad.
    emb = SinusoidalEmbedding(9, flip_sin_to_cos=True, freq_shift=0)(t)
    for row, tv in zip(emb.tolist(), t.tolist(), strict=True):
        omegas = [10000 ** (-i / 4) for i in range(4)]
        expected = [math.cos(tv * w) for w in omegas] + [math.sin(tv * w) for w in omegas] + [0.0]
        assert row == pytest.approx(expected, abs=2e-4)
    assert emb.dtype == torch.float32


def test_sinusoid_frequencies_are_a_float32_nonpersistent_buffer():
    model = presets.unet("tiny")
    assert not any("freqs" in k for k in model.state_dict())
    freqs = model.time_embed.sinusoid.freqs.clone()
    model = model.to(torch.bfloat16)
    assert model.time_embed.sinusoid.freqs.dtype == torch.float32
    assert torch.equal(model.time_embed.sinusoid.freqs, freqs)
    out = model(torch.randn(2, 1, 16, 16, dtype=torch.bfloat16), torch.tensor([3, 999]))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_time_may_be_long_float_or_scalar():
    torch.manual_seed(0)
    model = presets.unet("tiny", zero_init=False).eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        ref = model(x, torch.full((3,), 17))
        torch.testing.assert_close(model(x, torch.full((3,), 17.0)), ref)
        torch.testing.assert_close(model(x, torch.tensor(17)), ref)
        torch.testing.assert_close(model(x, 17), ref)
        assert not torch.allclose(model(x, torch.full((3,), 18)), ref)


# ---------------------------------------------------------------------------------------------- behaviour


def test_determinism_and_dropout():
    def build() -> UNet:
        torch.manual_seed(123)
        return presets.unet("tiny", dropout=0.5, zero_init=False)

    a, b = build(), build()
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([1, 500])
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(x, t), b(x, t))
        assert torch.equal(a(x, t), a(x, t))  # dropout off in eval
        a.train()
        assert not torch.equal(a(x, t), a(x, t))  # dropout on in training


def test_zero_init_output_is_zero():
    model = presets.unet("tiny")
    assert model.config.zero_init
    with torch.no_grad():
        assert torch.equal(model(torch.randn(2, 1, 16, 16), torch.tensor([1, 2])), torch.zeros(2, 1, 16, 16))


def test_class_conditional_forward():
    torch.manual_seed(0)
    model = presets.unet("tiny", num_classes=10, zero_init=False).eval()
    assert model.class_embed.num_embeddings == 11  # + the null label
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([5, 5, 5])
    with torch.no_grad():
        cond = model(x, t, torch.tensor([0, 1, 9]))
        null = model(x, t)  # y=None → null label
        assert cond.shape == null.shape == (3, 1, 16, 16)
        torch.testing.assert_close(null, model(x, t, torch.full((3,), 10)))
        assert not torch.allclose(cond, null)
        assert not torch.allclose(cond[0], cond[1])
    with pytest.raises(ValueError, match="unconditional"):
        presets.unet("tiny")(x, t, torch.tensor([0, 1, 2]))


def _dead_parameters(model: UNet, steps: int) -> list[str]:
    """Names of parameters whose gradient is still zero on the ``steps``-th SGD step."""
    torch.manual_seed(0)
    x, t, target = torch.randn(4, 1, 16, 16), torch.randint(0, 1000, (4,)), torch.randn(4, 1, 16, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x, t), target).backward()
        opt.step()
    return [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]


def test_gradient_flows_to_every_parameter_of_tiny():
    torch.manual_seed(0)
    assert _dead_parameters(presets.unet("tiny", zero_init=False), steps=1) == []
    # γ-gated attention: γ = 0 blocks the gradient to the attention's own weights on the first step only.
    torch.manual_seed(0)
    gated = presets.unet("tiny", zero_init=False, attention_gate=True)
    dead = _dead_parameters(gated, steps=1)
    assert (
        dead and all(".attns." in n or "mid.attn." in n for n in dead) and not any("gamma" in n for n in dead)
    )
    torch.manual_seed(0)
    assert _dead_parameters(presets.unet("tiny", zero_init=False, attention_gate=True), steps=2) == []
    # Ho et al.'s zero-initialised output layers hold back everything behind them for two steps.
    torch.manual_seed(0)
    assert _dead_parameters(presets.unet("tiny", attention_gate=True), steps=3) == []


@pytest.mark.parametrize(
    "options",
    [
        dict(),  # Ho-style: tf_same conv down, nearest+conv up
        dict(downsample_padding="symmetric", resblock_updown=True, use_scale_shift_norm=True),
        dict(skip_connections="level", decoder_channels="finer", downsample="conv4x4", upsample="transposed"),
        dict(
            skip_connections="level", downsample="maxpool", upsample="nearest", block="conv", input_conv=False
        ),
        dict(skip_connections="level", downsample="avgpool", upsample="nearest_conv", input_skip=True),
    ],
)
@pytest.mark.parametrize("size", [(13, 13), (7, 10), (28, 28)])
def test_odd_sizes_every_resampling_kind(options, size):
    cfg = UNetConfig(
        in_channels=2,
        out_channels=3,
        base_channels=8,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        image_size=16,
        norm_groups=4,
        time_embed_dim=16,
        **options,
    )
    with torch.no_grad():
        out = UNet(cfg)(torch.randn(1, 2, *size), torch.tensor([3]))
    assert out.shape == (1, 3, *size)


def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    model = presets.unet("mnist-cpu", zero_init=False).eval()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 900])
    with torch.no_grad():
        ref = model(x, t)
        model_cl = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(
            model_cl(x.to(memory_format=torch.channels_last), t), ref, atol=1e-4, rtol=1e-4
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model_cl(x.to(memory_format=torch.channels_last), t)
    assert low.shape == ref.shape and torch.isfinite(low).all()
    assert (low.float() - ref).abs().mean() < 0.1 * ref.abs().mean()


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(base_channels=0), "base_channels"),
        (dict(channel_mult=()), "channel_mult"),
        (dict(channel_mult=(1, 0)), "channel_mult"),
        (dict(num_res_blocks=0), "num_res_blocks"),
        (dict(norm_groups=24), "norm_groups"),  # 128 channels are not divisible by 24 groups
        (dict(activation="gelu"), "activation"),
        (dict(attention_resolutions=(12,)), "attention_resolutions"),  # not a level resolution of 32
        (dict(num_heads=3), "num_heads"),
        (dict(head_channels=0), "head_channels"),
        (dict(head_channels=96), "head_channels"),
        (dict(dropout=1.0), "dropout"),
        (dict(norm_eps=0.0), "norm_eps"),
        (dict(num_classes=0), "num_classes"),
        (dict(downsample="bilinear"), "downsample"),
        (dict(upsample="pixelshuffle"), "upsample"),
        (dict(decoder_channels="finer"), "decoder_channels"),
        (dict(block="conv", use_scale_shift_norm=True), "use_scale_shift_norm"),
        (dict(input_conv=False), "input_conv"),
        (dict(time_mlp=False, time_embed_dim=64), "time_embed_dim"),
        (dict(sinusoidal_dim=2), "sinusoidal_dim"),
        (dict(out_kernel_size=5), "out_kernel_size"),
        (dict(mid_channel_mult=(0,)), "mid_channel_mult"),
        (dict(weight_init="kaiming"), "weight_init"),
    ],
)
def test_config_validation(overrides, field):
    with pytest.raises(ValueError, match=rf"UNetConfig\.{field} "):
        UNetConfig(**overrides)


def test_config_dict_round_trip_and_lists():
    cfg = presets.unet_config("seed-iddpm-cond")
    data = cfg.to_dict()
    assert isinstance(data["channel_mult"], list)
    again = UNetConfig.from_dict(data)
    assert again == cfg and hash(again) == hash(cfg)
    with pytest.raises(ValueError, match="unknown UNetConfig field"):
        UNetConfig.from_dict({**data, "width": 3})
    with pytest.raises(TypeError):
        UNet({"base_channels": 8})  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [16, 15])
def test_patch_size_is_pixel_unshuffle_around_a_patch_one_network(size):
    """UNet(patch 2)(x) = pixel_shuffle(UNet'(pixel_unshuffle(x))) with UNet' the same weights on 4·C channels;
    sizes not divisible by 2 are edge-padded first and cropped after."""
    # 16 px, attention at 8
    base = presets.unet_config("tiny", zero_init=False, in_channels=2, out_channels=2)
    patched = UNet(dataclasses.replace(base, patch_size=2, attention_resolutions=(4,)))
    inner = UNet(
        dataclasses.replace(base, in_channels=8, out_channels=8, image_size=8, attention_resolutions=(4,))
    )
    inner.load_state_dict(patched.state_dict())
    assert patched.config.level_resolutions == (8, 4)
    x, t = torch.randn(3, 2, size, size), torch.tensor([0, 10, 99])
    padded = torch.nn.functional.pad(x, (0, size % 2, 0, size % 2), mode="replicate")
    expected = torch.nn.functional.pixel_shuffle(inner(torch.nn.functional.pixel_unshuffle(padded, 2), t), 2)
    out = patched(x, t)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected[..., :size, :size])


@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
def test_pooling_downsample_halves_with_ceiling(kind):
    """Each output is the max / mean of its 2×2 window; at an odd edge the window holds the pixels that exist."""
    torch.manual_seed(0)
    down = Downsample(3, kind, "tf_same")
    assert not list(down.parameters())
    x = torch.randn(2, 3, 5, 6)
    fill = float("-inf") if kind == "maxpool" else 0.0
    padded = torch.nn.functional.pad(x, (0, 0, 0, 1), value=fill).unflatten(2, (3, 2)).unflatten(4, (3, 2))
    if kind == "maxpool":
        expected = padded.amax(dim=(3, 5))
    else:
        count = torch.tensor([2.0, 2.0, 1.0]).view(3, 1) * 2  # rows in each window × 2 columns
        expected = padded.sum(dim=(3, 5)) / count
    torch.testing.assert_close(down(x), expected)


def test_nearest_upsample_repeats_pixels_to_the_skip_size():
    torch.manual_seed(0)
    up = Upsample(3, "nearest")
    assert not list(up.parameters())
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(up(x), x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    rows, cols = (torch.arange(7) * 4) // 7, (torch.arange(9) * 5) // 9  # nearest: source ⌊i·h/H⌋
    torch.testing.assert_close(up(x, (7, 9)), x[:, :, rows][:, :, :, cols])
