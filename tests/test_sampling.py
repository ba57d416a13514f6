"""Samplers: parity with diffusers on identical inputs, and exact recovery of Gaussian data."""

import math

import pytest
import torch

import ddpm
from ddpm import GaussianDiffusion, NoiseSchedule
from ddpm.sampling import METHODS, SPACINGS, classifier_free_guidance, dpmpp, timestep_grid


@pytest.fixture
def diffusers():
    """The parity tests compare with diffusers' schedulers; only they skip when it is not installed."""
    return pytest.importorskip("diffusers")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest)


def toy_model(x, t):
    """A smooth deterministic stand-in for a network: depends on x and t."""
    return 0.3 * x + torch.sin(t.float() / 97.0)[:, None, None, None] * 0.5


# --------------------------------------------------------------------------- schedules vs diffusers
def test_betas_match_diffusers(diffusers):
    for ours, kind in (
        (NoiseSchedule.linear(1000), "linear"),
        (NoiseSchedule.cosine(1000), "squaredcos_cap_v2"),
    ):
        ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=kind)
        assert torch.allclose(ours.betas.float(), ref.betas, atol=1e-6)
        assert torch.allclose(ours.alphas_cumprod.float(), ref.alphas_cumprod, atol=1e-6)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("t", [999, 500, 1])
@pytest.mark.parametrize("clip", [False, True])
def test_one_ancestral_step_matches_diffusers(variance, t, clip, diffusers):
    ref = diffusers.DDPMScheduler(
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


def test_respaced_ddpm_loop_matches_diffusers(diffusers):
    """20 ancestral steps on the 'leading' grid: diffusers recomputes β from ᾱ just as Improved DDPM §4."""
    ref = diffusers.DDPMScheduler(
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
def test_ddim_50_step_loop_matches_diffusers(spacing, eta, clip, prediction, ptype, diffusers):
    ref = diffusers.DDIMScheduler(
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
    for spacing in ("linspace", "logsnr_soft"):
        # Order 1 throughout: the exponential-integrator step with one node is DDIM's step (eq. 12, η = 0).
        a = dpmpp(toy_model, d, None, 17, order=1, noise=xT, spacing=spacing, final="x0")
        b = ddpm.sample(toy_model, d, None, "ddim", steps=17, noise=xT, spacing=spacing)
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


@pytest.mark.parametrize("final,sigmas", [("x0", "zero"), ("t0", "sigma_min")])
@pytest.mark.parametrize("prediction,ptype", [("eps", "epsilon"), ("v", "v_prediction")])
def test_dpmpp_2m_matches_diffusers(final, sigmas, prediction, ptype, diffusers):
    """Our 2M step integrates the line through the last two x̂₀ exactly: diffusers' solver_type="heun" form.

    On the same grid (custom timesteps) and model outputs the whole 20-step loop agrees; ``final="t0"`` stops at
    t = 0 as diffusers' final_sigmas_type="sigma_min", ``final="x0"`` goes to σ = 0 as its "zero".
    """
    d = GaussianDiffusion(NoiseSchedule.linear(1000), prediction=prediction)
    points = timestep_grid(1000, 20 + (final == "t0"), "logsnr_soft", d.schedule)
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, solver_type="heun", final_sigmas_type=sigmas, prediction_type=ptype
    )
    ref.set_timesteps(timesteps=list(reversed(points[1:] if final == "t0" else points)))
    xT = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    x = xT.clone()
    for t in ref.timesteps:
        x = ref.step(toy_model(x, t.expand(2)), t, x).prev_sample
    ours = ddpm.sample(toy_model, d, None, "dpmpp_2m", steps=20, noise=xT, clip_denoised=False, final=final)
    # diffusers' λ comes from a float32 ᾱ; ours from float64.
    assert torch.allclose(ours, x, atol=2e-4), (ours - x).abs().max()


def test_timestep_grids():
    assert timestep_grid(1000, 50, "leading")[:3] == [0, 20, 40]
    assert timestep_grid(1000, 50, "trailing")[-2:] == [979, 999]
    assert timestep_grid(1000, 10, "linspace") == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert timestep_grid(1000, None) == list(range(1000))
    lin = NoiseSchedule.linear(1000)
    for spacing in SPACINGS:
        for steps in (1, 2, 7, 50, 1000):
            grid = timestep_grid(1000, steps, spacing, lin)
            assert len(grid) == steps and all(b > a for a, b in zip(grid, grid[1:], strict=False)), (
                spacing,
                steps,
            )
            assert 0 <= grid[0] and grid[-1] <= 999
    for spacing in ("logsnr", "logsnr_soft", "karras"):
        grid = timestep_grid(1000, 11, spacing, lin)
        assert grid[0] == 0 and grid[-1] == 999, (spacing, grid)
        with pytest.raises(ValueError):
            timestep_grid(1000, 10, spacing)  # needs the schedule
    # logsnr: equal steps in λ = ½ log SNR (up to rounding to integer timesteps).
    lam = (0.5 * lin.log_snr)[timestep_grid(1000, 11, "logsnr", lin)]
    assert torch.allclose(lam.diff(), lam.diff().mean(), rtol=0.05)
    # logsnr_soft: the same spacing at low noise, fewer points at high noise.
    soft = timestep_grid(1000, 11, "logsnr_soft", lin)
    assert sum(t > 500 for t in soft) < sum(t > 500 for t in timestep_grid(1000, 11, "logsnr", lin))
    # karras: σ̃ = e^{−λ} of the grid follows EDM's ρ = 7 spacing (Karras et al. eq. 5) at its ends.
    sig = torch.exp(-0.5 * lin.log_snr)[timestep_grid(1000, 11, "karras", lin)]
    ramp = (sig ** (1 / 7)).flip(0)
    assert torch.allclose(ramp.diff()[:4], ramp.diff().mean(), rtol=0.05)
    with pytest.raises(ValueError):
        timestep_grid(1000, 0)
    with pytest.raises(ValueError):
        timestep_grid(1000, 10, "cubic")


def test_reproducible_and_noise_untouched():
    d = GaussianDiffusion(NoiseSchedule.linear(100))
    xT = torch.randn(2, 1, 1, 1)
    keep = xT.clone()
    for method in METHODS:
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
    on the linear schedule. (`test_ancestral_moments_are_exact` checks the implementation's moments without noise.)
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


def _impulse_moments(monkeypatch, d, method, steps):
    """Exact output mean and variance of a stochastic sampler with the exact model of Gaussian data: its output is
    A x_T + B + Σ_k C_k z_k, so unit impulses in x_T and in each z_k (one batch row each: x_T = 0, x_T = 1, then
    one per injected z, steps − 1 of them) give A, B and every C_k, hence the moments (B, A² + Σ C_k²)."""
    import ddpm.sampling as sampling

    calls = []

    def impulse(x, generator):
        z = torch.zeros_like(x)
        z[2 + len(calls)] = 1.0
        calls.append(1)
        return z

    monkeypatch.setattr(sampling, "_randn_like", impulse)
    noise = torch.zeros(steps + 1, 1, 1, 1)
    noise[1] = 1.0
    x = ddpm.sample(exact_eps(d), d, None, method, steps=steps, noise=noise, clip_denoised=False)
    x = x.double().flatten()
    assert len(calls) == steps - 1
    B, A, C = x[0].item(), (x[1] - x[0]).item(), x[2:] - x[0]
    return B, A**2 + (C**2).sum().item()


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ancestral_moments_are_exact(monkeypatch, kind):
    """The ancestral output is A x_T + B + Σ_k C_k z_k with the exact model: unit impulses in x_T and in each z_k
    (one batch row each) give A, B and every C_k, hence the exact output moments (B, A² + Σ C_k²) of the
    implementation. They must equal the independent derivation `predicted_moments` and converge to the data's:
    with σ² = β̃ the variance deficit shrinks like 1/steps (58 %, 21 %, 7 %, 1.5 % on the linear schedule)."""
    d = GaussianDiffusion(NoiseSchedule.from_name(kind, 1000))
    deficits = []
    for steps in (10, 50, 200, 1000):
        B, var = _impulse_moments(monkeypatch, d, "ddpm", steps)
        pm, pv = predicted_moments(d, "ddpm", steps)
        assert abs(B - pm) < 1e-5 and abs(var - pv) < 1e-5, (steps, B, pm, var, pv)
        assert abs(B - MU) < 0.01 * S
        deficits.append((S**2 - var) / S**2)
    assert all(0 < b < a / 2.5 for a, b in zip(deficits, deficits[1:], strict=False)), deficits
    assert deficits[-1] < 0.02, deficits


def affine_moments(diffusion, method, steps, **kw):
    """With the exact model of Gaussian data every ODE sampler is an affine map x_T ↦ A x_T + B, so from
    x_T ~ N(0, 1) its output is exactly N(B, A²): two runs (x_T = 0 and 1) give its moments without sampling noise."""
    x_T = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    x = ddpm.sample(
        exact_eps(diffusion), diffusion, None, method, steps=steps, noise=x_T, clip_denoised=False, **kw
    )
    x = x.double().flatten()
    return x[0].item(), (x[1] - x[0]).item() ** 2


# method: (step counts, how much the variance error must shrink from the 1st to the 2nd count, final tolerance)
ODE_CONVERGENCE = {
    "ddim": ((10, 20, 50, 100, 1000), 1.6, 0.01),  # first order
    "dpmpp_2m": ((10, 20, 50, 100), 2.5, 2e-3),  # second order
    "dpmpp_3m": ((10, 20, 50), 4.0, 1e-3),  # third order
    "unipc": ((10, 20, 50), 4.0, 1e-3),
    "heun": ((25, 50, 100, 500), 3.0, 2e-3),  # second order, two evaluations a step
}


@pytest.mark.parametrize("method", list(ODE_CONVERGENCE))
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ode_samplers_converge_on_gaussian_data(method, kind):
    """Each deterministic sampler's exact output moments converge to (μ, s²) as steps grow, at its order's rate.

    The floor (~3e-4 relative in the variance, 3e-3 s in the mean) is not the sampler's: x_T ~ N(0, 1) is not exactly
    q(x_{T−1}), and ``final="t0"`` stops at ᾱ_0 = 1 − β_1.
    """
    steps_list, shrink, tol = ODE_CONVERGENCE[method]
    d = GaussianDiffusion(NoiseSchedule.from_name(kind, 1000))
    errors = []
    for steps in steps_list:
        m, v = affine_moments(d, method, steps)
        assert abs(m - MU) < 0.01 * S, (steps, m)
        errors.append(abs(v - S**2) / S**2)
    assert errors[1] * shrink < errors[0], errors
    assert all(b < max(a, 1e-3) for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < tol, errors


def gaussian_model(diffusion, prediction):
    """The exact network of N(μ, s²) data in each parameterization (ε*, E[x₀|x_t] and v = √ᾱ ε − √(1−ᾱ) x₀)."""
    ac = diffusion.schedule.alphas_cumprod
    eps_model = exact_eps(diffusion)

    def model(x, t):
        a = ac[t].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        eps = eps_model(x, t)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]

    return model


@pytest.mark.parametrize("method", list(METHODS))
def test_every_sampler_reads_eps_x0_and_v_models_alike(method):
    xT = torch.randn(64, 1, 1, 1, generator=torch.Generator().manual_seed(8))
    out = {}
    for prediction in ("eps", "x0", "v"):
        d = GaussianDiffusion(NoiseSchedule.linear(1000), prediction=prediction)
        out[prediction] = ddpm.sample(
            gaussian_model(d, prediction),
            d,
            None,
            method,
            steps=10,
            noise=xT,
            clip_denoised=False,
            generator=torch.Generator().manual_seed(1),
        )
    for prediction in ("x0", "v"):
        assert torch.allclose(out[prediction], out["eps"], rtol=1e-4, atol=1e-4), prediction


@pytest.mark.parametrize("method", list(METHODS))
def test_learned_variance_and_guidance_compose_with_every_sampler(method):
    """A 2·C-channel (learned_range) model runs through every sampler: the variance channels drive only the
    ancestral noise (v = −1 is exactly β̃, i.e. fixed_small), and classifier-free guidance wraps any of them."""
    sched = NoiseSchedule.linear(1000)
    fixed, learned = GaussianDiffusion(sched), GaussianDiffusion(sched, variance="learned_range")
    xT = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(3))

    def cond_model(x, t, y):  # ε-channels then variance channels in [−1, 1]
        eps = toy_model(x, t) + 0.1 * y.float().view(-1, 1, 1, 1)
        return torch.cat([eps, torch.tanh(x + y.float().view(-1, 1, 1, 1))], dim=1)

    def run(model, diffusion):
        return ddpm.sample(
            model, diffusion, None, method, steps=8, noise=xT, generator=torch.Generator().manual_seed(4)
        )

    y, null, w = torch.tensor([1, 3]), 10, 1.5
    guided = classifier_free_guidance(cond_model, y, w, null, channels=2)

    def by_hand(x, t):
        c, u = cond_model(x, t, y), cond_model(x, t, torch.full_like(y, null))
        return torch.cat([(1 + w) * c[:, :2] - w * u[:, :2], c[:, 2:]], dim=1)

    assert torch.allclose(run(guided, learned), run(by_hand, learned), atol=1e-6)
    eps_only = classifier_free_guidance(lambda x, t, y: cond_model(x, t, y)[:, :2], y, w, null)
    with_small = run(lambda x, t: torch.cat([eps_only(x, t), -torch.ones_like(x)], dim=1), learned)
    assert torch.allclose(with_small, run(eps_only, fixed), atol=1e-5)
    if method == "ddpm":  # the learned variance is used …
        assert not torch.allclose(run(guided, learned), with_small, atol=1e-3)
    else:  # … and ignored by the deterministic samplers
        assert torch.allclose(run(guided, learned), with_small, atol=1e-6)


@pytest.mark.parametrize("method", ["dpmpp_2m", "unipc"])
@pytest.mark.parametrize("steps,bias_tol", [(10, 0.08), (20, 0.05), (100, 0.01)])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_multistep_gaussian_samples(method, steps, bias_tol, kind):
    """End to end with real noise: N = 40,000 samples have the data moments (tolerance: 5 SE + the step bias)."""
    d = GaussianDiffusion(NoiseSchedule.from_name(kind, 1000))
    n = 40_000
    x = ddpm.sample(
        exact_eps(d),
        d,
        (n, 1, 1, 1),
        method,
        steps=steps,
        clip_denoised=False,
        generator=torch.Generator().manual_seed(12),
    )
    assert abs(x.mean().item() - MU) < 5 * S / math.sqrt(n) + 0.01 * S
    assert abs(x.var().item() - S**2) < 5 * S**2 * math.sqrt(2 / n) + bias_tol * S**2


def test_dpmpp_2m_sde_first_order_is_ancestral():
    """SDE-DPM-Solver++ of order 1 is DDIM with η = 1, i.e. ancestral sampling on the same grid, draw for draw."""
    from ddpm.sampling import dpmpp_2m_sde

    d = GaussianDiffusion(NoiseSchedule.cosine(1000))
    xT = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(9)
    a = ddpm.sample(toy_model, d, None, "ddim", steps=25, eta=1.0, noise=xT, generator=g)
    b = dpmpp_2m_sde(
        toy_model,
        d,
        None,
        25,
        order=1,
        spacing="linspace",
        noise=xT,
        generator=torch.Generator().manual_seed(9),
    )
    assert torch.allclose(a, b, atol=1e-5)
    c = dpmpp_2m_sde(toy_model, d, None, 25, noise=xT, generator=torch.Generator().manual_seed(9))
    assert not torch.allclose(a, c, atol=1e-2)  # the second-order term is there


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_dpmpp_2m_sde_moments_converge_faster_than_ancestral(monkeypatch, kind):
    """On Gaussian data with the exact model the SDE solver's exact output moments approach (μ, s²) as steps grow,
    and at every step count its variance error is below the ancestral sampler's (second order against first)."""
    d = GaussianDiffusion(NoiseSchedule.from_name(kind, 1000))
    errors = []
    for steps in (10, 25, 50, 200):
        m, v = _impulse_moments(monkeypatch, d, "dpmpp_2m_sde", steps)
        _, v_anc = _impulse_moments(monkeypatch, d, "ddpm", steps)
        assert abs(m - MU) < 0.01 * S, (steps, m)
        errors.append(abs(v - S**2) / S**2)
        assert errors[-1] < abs(v_anc - S**2) / S**2, (steps, v, v_anc)
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 2e-3, errors


@pytest.mark.parametrize("T", [50, 100, 1000, 4000])
def test_every_step_count_gives_that_many_increasing_timesteps(T):
    """Every n in 1…T and every spacing: exactly n timesteps, strictly increasing, within [0, T−1] (a float
    ``arange`` once gave ``trailing`` n + 1 points starting at −1 for 62 of the n at T = 1000)."""
    schedule = NoiseSchedule.cosine(T)
    for spacing in SPACINGS:
        for n in range(1, T + 1):
            grid = timestep_grid(T, n, spacing, schedule)
            ok = len(grid) == n and grid[0] >= 0 and grid[-1] <= T - 1
            assert ok and all(a < b for a, b in zip(grid, grid[1:], strict=False)), (
                spacing,
                n,
                grid[:3],
                grid[-3:],
            )


def test_trailing_grid_at_the_step_counts_that_used_to_overshoot():
    """``trailing`` is diffusers' T − k·T/n − 1 (rounded) for every k < n, ending at T − 1; sampling works at n = 61."""
    for n in (61, 103, 121, 122, 201):
        expected = sorted(round(1000 - k * (1000 / n)) - 1 for k in range(n))
        assert timestep_grid(1000, n, "trailing") == expected and expected[-1] == 999
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    x = ddpm.sample(
        lambda x, t: torch.zeros_like(x), d, (2, 1, 2, 2), method="ddim", steps=61, spacing="trailing"
    )
    assert x.shape == (2, 1, 2, 2) and torch.isfinite(x).all()
