"""Samplers: parity with diffusers on identical inputs, and exact recovery of Gaussian data."""

import math

import pytest
import torch

import ddpm
from ddpm import GaussianDiffusion, NoiseSchedule
from ddpm.sampling import timestep_grid

diffusers = pytest.importorskip("diffusers")


def toy_model(x, t):
    """A smooth deterministic stand-in for a network: depends on x and t."""
    return 0.3 * x + torch.sin(t.float() / 97.0)[:, None, None, None] * 0.5


# --------------------------------------------------------------------------- schedules vs diffusers
def test_betas_match_diffusers():
    from diffusers import DDPMScheduler

    for ours, kind in (
        (NoiseSchedule.linear(1000), "linear"),
        (NoiseSchedule.cosine(1000), "squaredcos_cap_v2"),
    ):
        ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=kind)
        assert torch.allclose(ours.betas.float(), ref.betas, atol=1e-6)
        assert torch.allclose(ours.alphas_cumprod.float(), ref.alphas_cumprod, atol=1e-6)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("t", [999, 500, 1])
@pytest.mark.parametrize("clip", [False, True])
def test_one_ancestral_step_matches_diffusers(variance, t, clip):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", variance_type=variance, clip_sample=clip
    )
    d = GaussianDiffusion(NoiseSchedule.linear(1000), variance=variance)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g)
    out = toy_model(x, torch.full((2,), t))
    expected = ref.step(out, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
    pm = d.p_mean_variance(out, x, torch.full((2,), t), clip_denoised=clip)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    ours = pm.mean + pm.variance.sqrt() * z
    # diffusers keeps its schedule in float32 (β recomputed as 1 − ᾱ_t/ᾱ_{t−1} loses digits), ours in float64.
    assert torch.allclose(ours, expected, atol=2e-4)


def test_respaced_ddpm_loop_matches_diffusers():
    """20 ancestral steps on the 'leading' grid: diffusers recomputes β from ᾱ just as Improved DDPM §4."""
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, timestep_spacing="leading"
    )
    ref.set_timesteps(20)
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    xT = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    x, g = xT.clone(), torch.Generator().manual_seed(5)
    for t in ref.timesteps:
        x = ref.step(toy_model(x, t.expand(2)), t, x, generator=g).prev_sample
    ours = ddpm.sample(
        toy_model,
        d,
        None,
        "ddpm",
        steps=20,
        spacing="leading",
        noise=xT,
        generator=torch.Generator().manual_seed(5),
        clip_denoised=False,
    )
    assert torch.allclose(ours, x, atol=1e-4)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("prediction,ptype", [("eps", "epsilon"), ("v", "v_prediction"), ("x0", "sample")])
def test_ddim_50_step_loop_matches_diffusers(spacing, eta, clip, prediction, ptype):
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        clip_sample=clip,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing=spacing,
        prediction_type=ptype,
    )
    ref.set_timesteps(50)
    d = GaussianDiffusion(NoiseSchedule.linear(1000), prediction=prediction)
    xT = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    x, g = xT.clone(), torch.Generator().manual_seed(3)
    for t in ref.timesteps:
        # We use ε recomputed from the clipped x̂₀ (improved-diffusion); diffusers does so with this flag.
        x = ref.step(
            toy_model(x, t.expand(2)), t, x, eta=eta, generator=g, use_clipped_model_output=True
        ).prev_sample
    ours = ddpm.sample(
        toy_model,
        d,
        None,
        "ddim",
        steps=50,
        eta=eta,
        spacing=spacing,
        noise=xT,
        generator=torch.Generator().manual_seed(3),
        clip_denoised=clip,
    )
    assert torch.allclose(ours, x, atol=1e-4), (ours - x).abs().max()


def test_ddim_eta_one_is_ancestral_on_the_same_grid():
    d = GaussianDiffusion(NoiseSchedule.cosine(1000))
    xT = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    kw = dict(steps=25, noise=xT, clip_denoised=True)
    a = ddpm.sample(toy_model, d, None, "ddim", eta=1.0, generator=torch.Generator().manual_seed(9), **kw)
    b = ddpm.sample(toy_model, d, None, "ddpm", generator=torch.Generator().manual_seed(9), **kw)
    assert torch.allclose(a, b, atol=1e-5)


def test_dpmpp_first_order_equals_ddim():
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    xT = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(6))
    for steps in (1, 2):
        # One step of history: both take x̂₀ (steps=1), and the first DPM-Solver++ step is DDIM's (steps=2).
        a = ddpm.sample(toy_model, d, None, "dpmpp_2m", steps=steps, noise=xT, spacing="linspace", final="x0")
        b = ddpm.sample(toy_model, d, None, "ddim", steps=steps, noise=xT)
        assert torch.allclose(a, b, atol=1e-5)


def test_timestep_grids():
    assert timestep_grid(1000, 50, "leading")[:3] == [0, 20, 40]
    assert timestep_grid(1000, 50, "trailing")[-2:] == [979, 999]
    assert timestep_grid(1000, 10, "linspace") == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert timestep_grid(1000, None) == list(range(1000))
    for spacing in ("linspace", "leading", "trailing", "quadratic", "logsnr"):
        for steps in (1, 7, 50, 1000):
            grid = timestep_grid(1000, steps, spacing, NoiseSchedule.linear(1000))
            assert len(grid) == steps and all(b > a for a, b in zip(grid, grid[1:], strict=False)), (spacing, steps)
            assert 0 <= grid[0] and grid[-1] <= 999
    with pytest.raises(ValueError):
        timestep_grid(1000, 0)
    with pytest.raises(ValueError):
        timestep_grid(1000, 10, "karras")


def test_reproducible_and_noise_untouched():
    d = GaussianDiffusion(NoiseSchedule.linear(100))
    xT = torch.randn(2, 1, 1, 1)
    keep = xT.clone()
    for method in ("ddpm", "ddim", "dpmpp_2m"):
        a = ddpm.sample(
            toy_model, d, (2, 1, 1, 1), method, steps=10, generator=torch.Generator().manual_seed(0)
        )
        b = ddpm.sample(
            toy_model, d, (2, 1, 1, 1), method, steps=10, generator=torch.Generator().manual_seed(0)
        )
        assert torch.equal(a, b)
        ddpm.sample(toy_model, d, None, method, steps=10, noise=xT)
        assert torch.equal(xT, keep)


def test_intermediates():
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    x, frames = ddpm.sample(toy_model, d, (1, 1, 2, 2), "ddim", steps=20, intermediates=[999, 500, 0])
    assert set(frames) == {999, 500, 0} and frames[999].shape == x.shape


def test_bad_arguments():
    d = GaussianDiffusion(NoiseSchedule.linear(100))
    with pytest.raises(ValueError):
        ddpm.sample(toy_model, d, (1, 1, 1, 1), "euler")
    with pytest.raises(ValueError):
        ddpm.sample(toy_model, d, (1, 1, 1, 1), "ddpm", eta=0.5)
    with pytest.raises(ValueError):
        ddpm.sample(toy_model, d, (1, 1, 2, 2), "ddim", noise=torch.zeros(1, 1, 1, 1))


# --------------------------------------------------------------------------- Gaussian data, exact model
MU, S = 0.4, 0.5


def exact_eps(diffusion: GaussianDiffusion):
    """For data ~ N(μ, s²I): x_t ~ N(√ᾱ μ, v_t) with v_t = ᾱ s² + 1 − ᾱ, and E[ε|x_t] = √(1−ᾱ)(x_t − √ᾱ μ)/v_t."""
    ac = diffusion.schedule.alphas_cumprod

    def model(x, t):
        a = ac[t].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * S**2 + 1 - a)

    return model


def predicted_moments(diffusion, method, steps, eta=0.0):
    """Mean and variance of the sampler's output, propagated exactly through its affine-Gaussian steps.

    With the exact model every step is x' = A x + B + σ z, so (m, v) → (A m + B, A² v + σ²) from x_T ~ N(0, 1).
    This is the sampler's own discretization; the test compares it to the data and the samples to it.
    """
    grid = timestep_grid(diffusion.num_timesteps, steps, "linspace")
    ac = diffusion.schedule.alphas_cumprod[grid].tolist()
    m, v = 0.0, 1.0
    for i in reversed(range(len(grid))):
        a, a_prev = ac[i], (ac[i - 1] if i > 0 else 1.0)
        vt = a * S**2 + 1 - a
        # x̂₀ = E[x₀|x_t] = μ + √a s²/v_t (x − √a μ);  ε̂ = √(1−a)/v_t (x − √a μ)
        c0, d0 = math.sqrt(a) * S**2 / vt, MU - a * S**2 / vt * MU
        c1, d1 = math.sqrt(1 - a) / vt, -math.sqrt(1 - a) * math.sqrt(a) * MU / vt
        if method == "ddpm":
            beta = 1 - a / a_prev
            coef1, coef2 = beta * math.sqrt(a_prev) / (1 - a), (1 - a_prev) * math.sqrt(1 - beta) / (1 - a)
            A, B = coef1 * c0 + coef2, coef1 * d0
            sig2 = beta * (1 - a_prev) / (1 - a) if i > 0 else 0.0
        else:
            sig2 = eta**2 * (1 - a_prev) / (1 - a) * (1 - a / a_prev)
            k = math.sqrt(max(1 - a_prev - sig2, 0.0))
            A, B = math.sqrt(a_prev) * c0 + k * c1, math.sqrt(a_prev) * d0 + k * d1
        m, v = A * m + B, A * A * v + sig2
    return m, v


@pytest.mark.parametrize(
    "method,steps,bias_tol", [("ddpm", None, 0.02), ("ddim", 100, 0.07), ("ddim", 50, 0.13)]
)
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_gaussian_data_recovered(method, steps, bias_tol, kind):
    """Sampling N = 40,000 values with the exact ε-predictor recovers μ and s².

    Statistical tolerance: 5 standard errors (s/√N for the mean, s²√(2/N) for the variance).
    The sampler's own bias (finite steps, ancestral β̃) is computed exactly by `predicted_moments` and must itself be
    within ``bias_tol`` (relative) of s²: ancestral sampling with σ² = β̃ loses Σ coef1²·Var(x₀|x_t) of variance
    (about 1.5 % here), and DDIM's finite steps shrink the variance (Cauchy–Schwarz on each step): 5 % (100 steps) to 11 % (50 steps)
    on the linear schedule.
    """
    d = GaussianDiffusion(NoiseSchedule.from_name(kind, 1000))
    n = 40_000
    x = ddpm.sample(
        exact_eps(d),
        d,
        (n, 1, 1, 1),
        method,
        steps=steps,
        clip_denoised=False,
        generator=torch.Generator().manual_seed(11),
    )
    pm, pv = predicted_moments(d, method, steps)
    assert abs(pm - MU) < 0.01 * S and abs(pv - S**2) < bias_tol * S**2, (pm, pv)
    assert abs(x.mean().item() - pm) < 5 * math.sqrt(pv / n)
    assert abs(x.var().item() - pv) < 5 * pv * math.sqrt(2 / n)


@pytest.mark.parametrize("steps,bias_tol", [(10, 0.08), (20, 0.05), (100, 0.01)])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_dpmpp_gaussian_data(steps, bias_tol, kind):
    """DPM-Solver++(2M) converges to the data moments as steps grow (tolerance: 5 SE + the step bias)."""
    d = GaussianDiffusion(NoiseSchedule.from_name(kind, 1000))
    n = 40_000
    x = ddpm.sample(
        exact_eps(d),
        d,
        (n, 1, 1, 1),
        "dpmpp_2m",
        steps=steps,
        clip_denoised=False,
        generator=torch.Generator().manual_seed(12),
    )
    assert abs(x.mean().item() - MU) < 5 * S / math.sqrt(n) + 0.01 * S
    assert abs(x.var().item() - S**2) < 5 * S**2 * math.sqrt(2 / n) + bias_tol * S**2
