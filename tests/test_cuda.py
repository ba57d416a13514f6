"""What only a CUDA device can check: mixed precision against the CPU's fp32, training under each precision
(fp16 with its GradScaler), sampling, exact resume, and checkpoints written on the GPU read on the CPU.

Skipped without CUDA; ``benchmarks/gpu_check.py`` runs these on a GPU.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from ddpm.builders import build_diffusion, build_model, resolve_config
from ddpm.checkpoint import load_checkpoint
from ddpm.config import apply_overrides
from ddpm.data import load_gaussian_blobs
from ddpm.pipeline import generate, load_model
from ddpm.recipes import get_recipe
from ddpm.runtime import autocast_context
from ddpm.sampling import sample
from ddpm.train import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def _cfg(*overrides: str):
    """The `tiny` recipe (1×16×16 blobs, 45k parameters) on CUDA."""
    base = ["data.limit=512", "train.checkpoint_every=none", "train.log_every=1", "train.device=cuda"]
    return apply_overrides(
        get_recipe("tiny"), [*base, "train.threads=none", "data.val_fraction=0", *overrides]
    )


def _random_network(seed: int = 0):
    """A tiny U-Net whose every weight is random: Ho et al.'s zero-initialised output conv would make the loss
    exactly E[ε²] whatever the precision."""
    cfg = resolve_config(_cfg())
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))  # the output is O(1): the loss is about 2.4, not 1
    return cfg, model


@pytest.fixture
def exact_fp32():
    """No TF32 in convolutions or matrix products (CUDA's default uses it in cuDNN): fp32 as the CPU computes."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        yield
    torch.backends.cuda.matmul.allow_tf32 = matmul


@pytest.mark.parametrize(
    ("precision", "loss_rtol", "min_cosine"), [("bf16", 1e-2, 0.995), ("fp16", 2e-3, 0.999)]
)
def test_mixed_precision_loss_and_gradients_match_cpu_fp32(precision, loss_rtol, min_cosine):
    """The same network, batch, t and ε: the loss under CUDA autocast (fp16: through a GradScaler, unscaled
    before comparing) equals the CPU's fp32 loss within the precision's rounding, and so does the gradient."""
    cfg, cpu_model = _random_network()
    gpu_model = copy.deepcopy(cpu_model).to(CUDA)
    diffusion = build_diffusion(cfg.diffusion)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand((16, 1, 16, 16), generator=g) * 2 - 1
    t = torch.randint(0, diffusion.num_timesteps, (16,), generator=g)
    noise = torch.randn(x0.shape, generator=g)

    ref = diffusion.training_losses(cpu_model, x0, t, noise)["loss"].mean()
    ref.backward()
    with autocast_context(precision, CUDA):
        loss = diffusion.training_losses(gpu_model, x0.to(CUDA), t.to(CUDA), noise.to(CUDA))["loss"].mean()
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    opt = torch.optim.SGD(gpu_model.parameters(), lr=0.0)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=loss_rtol)
    a = torch.cat([p.grad.flatten() for p in cpu_model.parameters()])
    b = torch.cat([p.grad.flatten().cpu() for p in gpu_model.parameters()])
    assert torch.isfinite(b).all()
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > min_cosine
    assert float(b.norm() / a.norm()) == pytest.approx(1.0, rel=2 * loss_rtol)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_trainer_trains_on_cuda_in_each_precision(precision, tmp_path):
    """fit() on CUDA with the data on the GPU: finite losses that fall, the GradScaler on exactly for fp16, the
    weights and the checkpoint's state finite."""
    cfg = _cfg("train.max_steps=40", f"train.precision={precision}", "train.lr=2e-3")
    data = load_gaussian_blobs(image_size=16, n=512).to(CUDA)
    tr = Trainer(cfg, tmp_path / "run", data=(data, None), progress=False)
    assert tr.precision == precision and next(tr.model.parameters()).is_cuda
    assert tr.scaler.is_enabled() == (precision == "fp16")
    summary = tr.fit()
    assert summary["step"] == 40
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) >= 30 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])
    assert all(torch.isfinite(p).all() for p in tr.ema.model.parameters())


def test_ddim_on_cuda_matches_cpu_from_the_same_noise(exact_fp32):
    """DDIM (η = 0) is deterministic given x_T: on CUDA in fp32 it ends where the CPU does."""
    cfg, model = _random_network(seed=3)
    model.eval()
    diffusion = build_diffusion(cfg.diffusion)
    noise = torch.randn((8, 1, 16, 16), generator=torch.Generator().manual_seed(2))
    ref = sample(model, diffusion, None, method="ddim", steps=10, noise=noise)
    out = sample(model.to(CUDA), diffusion, None, method="ddim", steps=10, noise=noise.to(CUDA))
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=1e-4)
    # the ancestral sampler draws its noise on the device, from a CUDA generator
    g = torch.Generator(CUDA).manual_seed(0)
    x = sample(model, diffusion, (8, 1, 16, 16), method="ddpm", steps=20, generator=g)
    assert x.is_cuda and torch.isfinite(x).all() and x.abs().max() <= 1.0 + 1e-6


def test_resume_on_cuda_continues_exactly(tmp_path, exact_fp32):
    """4 steps at once = 2 steps, a checkpoint, and 2 resumed steps (the CUDA generator's state travels)."""
    data = load_gaussian_blobs(image_size=16, n=512)
    straight = Trainer(_cfg("train.max_steps=4"), tmp_path / "a", data=(data, None), progress=False)
    straight.fit()
    cut = Trainer(_cfg("train.max_steps=2"), tmp_path / "b", data=(data, None), progress=False)
    cut.fit()
    resumed = Trainer(
        _cfg("train.max_steps=4"), tmp_path / "b", resume=True, data=(data, None), progress=False
    )
    resumed.fit()

    def losses(run):
        recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in recs if "loss" in r}

    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)


def test_checkpoint_written_on_cuda_loads_and_samples_on_cpu(tmp_path):
    """An fp16 GPU run: its checkpoint (weights, state with CUDA RNG states) loads on the CPU with the same
    weights, and sampling there falls back from fp16 to a CPU precision."""
    cfg = _cfg("train.max_steps=3", "train.precision=fp16")
    tr = Trainer(
        cfg, tmp_path / "run", data=(load_gaussian_blobs(image_size=16, n=256), None), progress=False
    )
    tr.fit()
    ck = load_checkpoint(tmp_path / "run")
    assert ck.step == 3 and ck.state is not None and "cuda_rng" in ck.state
    lm = load_model(tmp_path / "run", device="cpu")
    for (name, p), q in zip(lm.model.state_dict().items(), tr.ema.model.state_dict().values(), strict=True):
        assert p.device == CPU and torch.equal(p, q.cpu()), name
    x = generate(lm, 4, method="ddim", steps=5, seed=0, threads=1)
    assert x.dtype == torch.uint8 and x.shape == (4, 1, 16, 16)
