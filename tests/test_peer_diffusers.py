"""benchmarks/peers/diffusers_unconditional.py: the recipe is train_unconditional.py's defaults at resolution 32 (the
values below are read off that script, huggingface/diffusers @ 58eb52c0803e), a step does what its loop body does,
and sampling is DDIMPipeline's."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "diffusers_unconditional.py"
_spec = importlib.util.spec_from_file_location("diffusers_unconditional", _PATH)
du = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("diffusers_unconditional", du)  # dataclasses look their module up there
_spec.loader.exec_module(du)

pytestmark = pytest.mark.usefixtures("one_thread")

# train_unconditional.py, l. 381-402 with --resolution 32: the network it builds, and its size.
SCRIPT_BLOCKS = {
    "block_out_channels": (128, 128, 256, 256, 512, 512),
    "down_block_types": (
        "DownBlock2D",
        "DownBlock2D",
        "DownBlock2D",
        "DownBlock2D",
        "AttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    "layers_per_block": 2,
    "sample_size": 32,
}
SCRIPT_PARAMS = 113_673_219  # sum(p.numel()) of UNet2DModel(**that)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """train() on 2 images with a budget that ends after the first step (the budget is checked before each)."""
    out = tmp_path_factory.mktemp("peer") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = du.train(_images(2), minutes=1e-6, out_dir=out, seed=0, threads=1, progress=False)
    finally:
        torch.set_num_threads(before)
    return out, summary


def test_recipe_is_the_scripts_defaults():
    r = du.Recipe()
    assert (r.train_batch_size, r.num_epochs, r.learning_rate, r.lr_scheduler, r.lr_warmup_steps) == (
        16,
        100,
        1e-4,
        "cosine",
        500,
    )
    assert (r.adam_beta1, r.adam_beta2, r.adam_weight_decay, r.adam_epsilon, r.max_grad_norm) == (
        0.95,
        0.999,
        1e-6,
        1e-8,
        1.0,
    )
    assert (r.use_ema, r.random_flip, r.center_crop, r.mixed_precision) == (False, False, False, "no")
    assert (r.ema_inv_gamma, r.ema_power, r.ema_max_decay) == (1.0, 0.75, 0.9999)
    assert r.total_steps(50_000) == 312_500  # ceil(50000 / 16) batches × 100 epochs
    assert r.total_steps(50_001) == 3126 * 100  # the epoch's last, short batch counts
    with pytest.raises(ValueError, match="defaults"):
        du.Recipe(mixed_precision="bf16")


def test_network_and_scheduler_are_the_scripts():
    cfg = du.unet_config()
    assert {k: cfg[k] for k in SCRIPT_BLOCKS} == SCRIPT_BLOCKS
    assert set(cfg) == {*SCRIPT_BLOCKS, "in_channels", "out_channels"}  # nothing else overridden
    with torch.device("meta"):
        net = diffusers.UNet2DModel(**cfg)
    assert sum(p.numel() for p in net.parameters()) == SCRIPT_PARAMS
    assert net.config.time_embedding_type == "positional" and net.config.norm_num_groups == 32
    sched = diffusers.DDPMScheduler(**du.scheduler_config())
    c = sched.config
    assert (c.num_train_timesteps, c.beta_schedule, c.prediction_type) == (1000, "linear", "epsilon")
    assert (c.beta_start, c.beta_end, c.variance_type, c.clip_sample) == (1e-4, 0.02, "fixed_small", True)


def test_input_is_the_scripts_torchvision_transform():
    """Resize(32, bilinear) → RandomCrop(32) → ToTensor → Normalize(0.5, 0.5) on PIL images (l. 479-490) equals
    to_model_input bit for bit: at 32×32 the spatial transforms are the identity."""
    from PIL import Image
    from torchvision import transforms

    aug = transforms.Compose(
        [
            transforms.Resize(32, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.RandomCrop(32),
            transforms.Lambda(lambda x: x),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.5]),
        ]
    )
    imgs = _images(4, seed=3)
    want = torch.stack([aug(Image.fromarray(im.permute(1, 2, 0).numpy()).convert("RGB")) for im in imgs])
    assert torch.equal(du.to_model_input(imgs), want)


def test_random_flip_mirrors_about_half_the_images():
    x = du.to_model_input(_images(200, seed=1))
    g = torch.Generator().manual_seed(0)
    assert torch.equal(du.augment(x, False, g), x)  # the default: no flip
    y = du.augment(x, True, g)
    same = (y == x).flatten(1).all(1)
    mirrored = (y == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and not bool((same & mirrored).any())
    assert 70 <= int(mirrored.sum()) <= 130  # Binomial(200, 1/2): ±4.2 σ


def test_save_writes_the_ema_weights_and_keeps_the_raw_ones(tmp_path):
    """With use_ema (the README's flag, not a default) the saved unet holds the EMA's shadow weights, as the
    script's ema_model.store/copy_to/restore around save_pretrained; the model being trained keeps its own."""
    setup = du.build(_images(2), du.Recipe(use_ema=True), seed=0)
    raw = [p.detach().clone() for p in setup.model.parameters()]
    for s in setup.ema.shadow_params:
        s.add_(1.0)
    setup.save(tmp_path)
    saved = diffusers.UNet2DModel.from_pretrained(str(tmp_path / "unet"))
    assert all(torch.equal(a + 1.0, b) for a, b in zip(raw, saved.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(raw, setup.model.parameters(), strict=True))


def test_one_step_is_the_scripts_loop_body():
    """The first step: lr is the cosine-with-warm-up's 0 (so the weights do not move) and AdamW's moments hold the
    gradient clipped to global norm 1: exp_avg = (1 − β1) g, exp_avg_sq = (1 − β2) g². The schedule is the one for
    50,000 images (a view of one image 50,000 times): 500 warm-up steps, then a half cosine to 0 at step 312,500."""
    setup = du.build(_images(1).expand(50_000, -1, -1, -1), seed=0)
    before = [p.detach().clone() for p in setup.model.parameters()]
    assert setup.optimizer.param_groups[0]["lr"] == 0.0
    loss = setup.step(torch.tensor([0, 1]))
    assert math.isfinite(loss) and loss > 0
    assert all(torch.equal(a, p) for a, p in zip(before, setup.model.parameters(), strict=True))
    states = [setup.optimizer.state[p] for p in setup.model.parameters()]
    g = [s["exp_avg"] / (1 - 0.95) for s in states]
    assert math.isclose(math.sqrt(sum(float((x.double() ** 2).sum()) for x in g)), 1.0, rel_tol=1e-4)
    for s, x in zip(states, g, strict=True):
        torch.testing.assert_close(s["exp_avg_sq"], (1 - 0.999) * x * x, rtol=1e-3, atol=1e-16)
    assert setup.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 / 500)
    lam = setup.lr_scheduler.lr_lambdas[0]
    assert lam(250) == pytest.approx(0.5) and lam(500) == 1.0
    assert lam(500 + 312_000 // 4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lam(500 + 312_000 // 2) == pytest.approx(0.5) and lam(312_500) == 0.0


def test_train_runs_the_budget_and_saves_a_pipeline(trained):
    out, summary = trained
    assert summary["steps"] == 1 and summary["images_seen"] == 2
    assert math.isfinite(summary["final_loss"]) and summary["threads"] == []
    assert summary["lr_last"] == pytest.approx(1e-4 / 500)
    assert json.loads((out / "train_summary.json").read_text())["recipe"]["adam_beta1"] == 0.95
    pipe = diffusers.DDPMPipeline.from_pretrained(
        str(out)
    )  # the folder is a DDPMPipeline, as the script saves
    assert sum(p.numel() for p in pipe.unet.parameters()) == SCRIPT_PARAMS
    with pytest.raises(ValueError, match="uint8"):
        du.train(_images(2).float(), minutes=1, out_dir=out)
    with pytest.raises(ValueError, match="minutes"):
        du.train(_images(2), minutes=0, out_dir=out)


def test_sample_is_ddim_pipelines(trained):
    """sample() at 2 steps equals DDIMPipeline(DDIMScheduler.from_config(…)) with the same seed, η = 0, whatever
    the batch size."""
    out, _ = trained
    x = du.sample(out, 2, batch_size=2, seed=5, steps=2, threads=1)
    assert x.dtype == torch.uint8 and x.shape == (2, 3, 32, 32)
    pipe = diffusers.DDIMPipeline.from_pretrained(str(out))  # the saved DDPMScheduler's config, read as DDIM
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(5),
        eta=0.0,
        num_inference_steps=2,
        output_type="np",
    ).images
    ref = torch.from_numpy((ref * 255).round().astype(np.uint8)).permute(0, 3, 1, 2)
    assert torch.equal(x, ref)  # the same operations on one thread: bit for bit
    assert torch.equal(du.sample(out, 2, batch_size=1, seed=5, steps=2, threads=1), x)
    with pytest.raises(FileNotFoundError, match="unet"):
        du.sample(out / "missing", 2)
