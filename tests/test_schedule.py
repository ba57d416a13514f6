"""NoiseSchedule: closed forms of Ho et al. 2020 and Nichol & Dhariwal 2021."""

import math

import pytest
import torch

from ddpm import NoiseSchedule
from ddpm.schedule import cosine_alpha_bar


@pytest.mark.parametrize("T", [1, 500, 1000, 4000])
def test_lengths_dtypes(T):
    for s in (NoiseSchedule.linear(T), NoiseSchedule.cosine(T)):
        for name in (
            "betas",
            "alphas",
            "alphas_cumprod",
            "alphas_cumprod_prev",
            "posterior_variance",
            "posterior_log_variance_clipped",
            "posterior_mean_coef1",
            "posterior_mean_coef2",
            "sqrt_recipm1_alphas_cumprod",
            "log_snr",
        ):
            a = getattr(s, name)
            assert a.dtype == torch.float64 and a.shape == (T,), name
            assert torch.isfinite(a).all(), name


def test_linear_endpoints_and_terminal_alpha_bar():
    s = NoiseSchedule.linear(1000)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0))
    # ᾱ_T = ∏(1 − β) ≈ exp(−Σ(β + β²/2)) ≈ 4e-5 for the Ho et al. schedule: pure noise at the end.
    approx = math.exp(-torch.sum(s.betas + s.betas**2 / 2).item())
    assert s.alphas_cumprod[-1].item() == pytest.approx(approx, rel=1e-3)
    assert s.alphas_cumprod[-1] < 1e-4
    assert NoiseSchedule.cosine(1000).alphas_cumprod[-1] < 1e-6


@pytest.mark.parametrize("T", [1, 50, 1000, 4000])
def test_cosine_alpha_bar_follows_its_formula(T):
    """Nichol & Dhariwal 2021 eq. 17 written out: ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2),
    s = 0.008, and β(t) = min(1 − ᾱ(t)/ᾱ(t−1), 0.999) (§3.2). Index i holds β(i+1), so alphas_cumprod[i] = ᾱ(i+1)."""
    s = 0.008
    f = [math.cos((k / T + s) / (1 + s) * math.pi / 2) ** 2 for k in range(T + 1)]
    alpha_bar = [fk / f[0] for fk in f]  # ᾱ(0) = 1 … ᾱ(T)
    betas = torch.tensor(
        [min(1 - alpha_bar[i + 1] / alpha_bar[i], 0.999) for i in range(T)], dtype=torch.float64
    )
    sched = NoiseSchedule.cosine(T)
    assert torch.allclose(sched.betas, betas, rtol=1e-12, atol=1e-15)  # 1 − ratio: float64 cancellation
    # f(T) = cos²(π/2) = 0: the last β is the clip's 0.999, and only the last few steps reach it
    clipped = (betas == 0.999).nonzero().flatten().tolist()
    assert (
        sched.betas[-1].item() == 0.999 and clipped == list(range(T - len(clipped), T)) and len(clipped) <= 2
    )
    # before the clip bites, ᾱ is f(t)/f(0) itself
    first_clip = clipped[0]
    expected = torch.tensor(alpha_bar[1 : first_clip + 1], dtype=torch.float64)
    assert torch.allclose(sched.alphas_cumprod[:first_clip], expected, rtol=1e-10, atol=1e-14)
    assert torch.allclose(sched.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-10, atol=0)
    # the public helper is f itself (t already divided by T)
    grid = torch.arange(T + 1, dtype=torch.float64) / T
    assert torch.allclose(
        cosine_alpha_bar(grid, s), torch.tensor(f, dtype=torch.float64), rtol=1e-12, atol=1e-30
    )


def test_posterior_quantities():
    s = NoiseSchedule.linear(1000)
    assert s.posterior_variance[0] == 0
    assert (s.posterior_variance[1:] < s.betas[1:]).all()  # β̃ < β for t ≥ 1
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]
    assert torch.allclose(s.posterior_log_variance_clipped[1:], s.posterior_variance[1:].log())


@pytest.mark.parametrize("t", [0, 1, 10, 500, 999])
def test_posterior_is_bayes_rule(t):
    """q(x_{t−1}|x_t, x₀) ∝ q(x_t|x_{t−1}) q(x_{t−1}|x₀): check mean/variance by numerical integration."""
    s = NoiseSchedule.linear(1000)
    x0, xt = 0.7, -0.4
    a, b, ab_prev = s.alphas[t].item(), s.betas[t].item(), s.alphas_cumprod_prev[t].item()
    if t == 0:  # x_{t−1} = x₀ exactly: zero posterior variance, mean x₀
        assert s.posterior_mean_coef1[0].item() == pytest.approx(1.0)
        assert s.posterior_mean_coef2[0].item() == pytest.approx(0.0, abs=1e-12)
        return
    sd = math.sqrt(min(b / a, 1 - ab_prev))
    centre = s.posterior_mean_coef1[t].item() * x0 + s.posterior_mean_coef2[t].item() * xt
    grid = torch.linspace(centre - 12 * sd, centre + 12 * sd, 400001, dtype=torch.float64)
    log_lik = -((xt - math.sqrt(a) * grid) ** 2) / (2 * b)
    log_prior = -((grid - math.sqrt(ab_prev) * x0) ** 2) / (2 * (1 - ab_prev))
    w = torch.exp(log_lik + log_prior - (log_lik + log_prior).max())
    w = w / w.sum()
    mean = (w * grid).sum().item()
    var = (w * (grid - mean) ** 2).sum().item()
    assert mean == pytest.approx(centre, rel=1e-6, abs=1e-9)
    assert var == pytest.approx(s.posterior_variance[t].item(), rel=1e-5)


def test_respace_keeps_marginals():
    s = NoiseSchedule.cosine(1000)
    idx = [0, 99, 300, 301, 999]
    r = s.respace(idx)
    assert torch.allclose(r.alphas_cumprod, s.alphas_cumprod[idx], rtol=1e-12)
    assert torch.allclose(s.respace(range(1000)).betas, s.betas, rtol=1e-9)
    with pytest.raises(ValueError):
        s.respace([5, 3])
    with pytest.raises(ValueError):
        s.respace([0, 1000])


def test_bad_input():
    with pytest.raises(ValueError):
        NoiseSchedule([0.1, 1.5])
    with pytest.raises(ValueError):
        NoiseSchedule.linear(0)
    with pytest.raises(ValueError):
        NoiseSchedule.from_name("sigmoid")
