"""diffusers folders ↔ ddpm run directories: outputs equal diffusers', exact round trips, DDPMPipeline loads ours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddpm.checkpoint import load_checkpoint
from ddpm.interop.diffusers import (
    diffusion_config_from_scheduler,
    export_diffusers,
    import_diffusers,
    scheduler_config_from_diffusion,
)
from ddpm.pipeline import load_model
from ddpm.train import build_diffusion

diffusers = pytest.importorskip("diffusers")

# The DDPM (google/ddpm-cifar10-32) configuration, narrowed for speed: the mapping is the point here.
SMALL = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    norm_num_groups=32,
    norm_eps=1e-6,
    freq_shift=1,
    flip_sin_to_cos=False,
    downsample_padding=0,
    act_fn="silu",
    dropout=0.1,
)


def _save_diffusers(path, unet_kwargs=SMALL, seed=0, **scheduler):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**unet_kwargs).eval()
    unet.save_pretrained(path / "unet")
    sched = diffusers.DDPMScheduler(**scheduler)
    sched.save_pretrained(path / "scheduler")
    return unet, sched


def _inputs(channels=3, size=16, n=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, channels, size, size, generator=g), torch.tensor([3, 917][:n])


@torch.no_grad()
def test_import_matches_diffusers_and_samples(tmp_path):
    unet, sched = _save_diffusers(tmp_path / "hf")
    ckpt = import_diffusers(tmp_path / "hf", tmp_path / "run")
    assert ckpt == tmp_path / "run" / "checkpoints" / "step-0000000"
    lm = load_model(tmp_path / "run", device="cpu")
    x, t = _inputs()
    torch.testing.assert_close(lm.model(x, t), unet(x, t).sample, rtol=1e-5, atol=1e-5)
    # the scheduler became the diffusion: the same betas, and the run's sampling clips as diffusers does
    betas = build_diffusion(lm.config.diffusion).schedule.betas
    torch.testing.assert_close(betas, sched.betas.double(), rtol=0, atol=1e-7)
    assert lm.config.diffusion.prediction == "eps" and lm.config.diffusion.variance == "fixed_small"
    assert lm.config.sample.clip_denoised and lm.config.source.startswith("diffusers:")
    ck = load_checkpoint(ckpt)
    assert all(torch.equal(ck.model[k], ck.ema[k]) for k in ck.model)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["base_channels"] == 32

    from ddpm.cli import main

    out = tmp_path / "s.npz"
    rc = main(["sample", "--run", str(tmp_path / "run"), "--n", "2", "--method", "ddim", "--steps", "2",
               "--out", str(out), "--device", "cpu"])  # fmt: skip
    assert rc == 0 and np.load(out)["x"].shape == (2, 16, 16, 3)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        import_diffusers(tmp_path / "hf", tmp_path / "run")


@torch.no_grad()
def test_round_trip_is_exact_and_ddpm_pipeline_loads_the_export(tmp_path):
    unet, sched = _save_diffusers(
        tmp_path / "hf",
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        variance_type="fixed_large",
        clip_sample=False,
    )
    import_diffusers(tmp_path / "hf", tmp_path / "run")
    out = export_diffusers(tmp_path / "run", tmp_path / "export")
    assert {p.name for p in out.iterdir()} == {"model_index.json", "unet", "scheduler"}

    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    theirs = pipe.unet.eval()
    original = unet.state_dict()
    assert theirs.state_dict().keys() == original.keys()
    assert all(torch.equal(theirs.state_dict()[k], original[k]) for k in original)  # import→export is exact
    x, t = _inputs()
    ours = load_model(tmp_path / "run", device="cpu").model
    torch.testing.assert_close(theirs(x, t).sample, ours(x, t), rtol=1e-5, atol=1e-5)
    for key in ("beta_schedule", "prediction_type", "variance_type", "clip_sample", "num_train_timesteps"):
        assert pipe.scheduler.config[key] == sched.config[key], key
    torch.testing.assert_close(pipe.scheduler.betas, sched.betas, rtol=0, atol=0)

    # ... and ours → diffusers → ours is exact too
    import_diffusers(out, tmp_path / "again")
    a, b = load_checkpoint(tmp_path / "run"), load_checkpoint(tmp_path / "again")
    assert a.config.model == b.config.model and a.config.diffusion == b.config.diffusion
    assert all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)

    with pytest.raises(ValueError, match="not an empty directory"):
        export_diffusers(tmp_path / "run", out)


def test_scheduler_mapping_and_unsupported_settings():
    d, clip = diffusion_config_from_scheduler(diffusers.DDPMScheduler(variance_type="learned_range").config)
    assert (d.schedule, d.variance, d.prediction, d.loss, clip) == (
        "linear",
        "learned_range",
        "eps",
        "hybrid",
        True,
    )
    d, _ = diffusion_config_from_scheduler({"_class_name": "DDIMScheduler", "prediction_type": "sample"})
    assert (d.prediction, d.variance) == ("x0", "fixed_small")
    cosine, _ = diffusion_config_from_scheduler(
        {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 500}
    )
    ref = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=500)
    torch.testing.assert_close(build_diffusion(cosine).schedule.betas, ref.betas.double(), rtol=0, atol=1e-7)
    for bad, match in [
        ({"beta_schedule": "scaled_linear"}, "beta_schedule='scaled_linear'"),
        ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
        ({"variance_type": "learned"}, "variance_type='learned'"),
        ({"prediction_type": "flow"}, "prediction_type='flow'"),
        ({"thresholding": True}, "thresholding"),
        ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
        ({"clip_sample_range": 2.0}, "clip_sample_range"),
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
    ]:
        with pytest.raises(ValueError, match=match):
            diffusion_config_from_scheduler(bad)
    # export side: a diffusers config round-trips, and a cosine offset diffusers cannot express is refused
    back = scheduler_config_from_diffusion(cosine)
    assert diffusion_config_from_scheduler(back)[0] == cosine
    with pytest.raises(ValueError, match="cosine_s"):
        from dataclasses import replace

        scheduler_config_from_diffusion(replace(cosine, cosine_s=0.01))


def test_import_errors(tmp_path):
    with pytest.raises(ValueError, match="config.json not found"):
        import_diffusers(tmp_path / "nothing", tmp_path / "run")
    _save_diffusers(
        tmp_path / "hf", variance_type="learned_range"
    )  # 3 output channels cannot hold a variance
    with pytest.raises(ValueError, match="needs 6"):
        import_diffusers(tmp_path / "hf", tmp_path / "run")
    (tmp_path / "hf" / "scheduler" / "scheduler_config.json").write_text(json.dumps({"thresholding": True}))
    with pytest.raises(ValueError, match="thresholding"):
        import_diffusers(tmp_path / "hf", tmp_path / "run")


@torch.no_grad()
def test_bin_weights_are_read_weights_only(tmp_path):
    unet, _ = _save_diffusers(tmp_path / "hf")
    st = tmp_path / "hf" / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(unet.state_dict(), st.with_suffix(".bin"))
    st.unlink()
    import_diffusers(tmp_path / "hf", tmp_path / "run")
    x, t = _inputs()
    torch.testing.assert_close(load_model(tmp_path / "run", device="cpu").model(x, t), unet(x, t).sample)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, st.with_suffix(".bin"))
    with pytest.raises(ValueError, match="weights-only"):
        import_diffusers(tmp_path / "hf", tmp_path / "run2")


@torch.no_grad()
def test_full_ddpm_cifar10_folder_parity(tmp_path):
    """google/ddpm-cifar10-32's architecture (35,746,307 parameters) through the files, both ways."""
    from ddpm.interop.diffusers import unet_config_to_diffusers
    from ddpm.nn import presets

    kwargs = unet_config_to_diffusers(presets.unet_config("ddpm-cifar10"))
    unet, _ = _save_diffusers(tmp_path / "hf", kwargs)
    import_diffusers(tmp_path / "hf", tmp_path / "run")
    ours = load_model(tmp_path / "run", device="cpu").model
    assert ours.num_parameters() == 35_746_307
    x, t = _inputs(size=32, n=1)
    torch.testing.assert_close(ours(x, t), unet(x, t).sample, rtol=1e-5, atol=1e-5)
    back = diffusers.UNet2DModel.from_pretrained(
        export_diffusers(tmp_path / "run", tmp_path / "out") / "unet"
    )
    assert all(torch.equal(back.state_dict()[k], v) for k, v in unet.state_dict().items())
