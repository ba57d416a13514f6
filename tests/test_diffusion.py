"""GaussianDiffusion: forward process, parameterizations, p_mean_variance, losses and the VLB pieces."""

import math

import pytest
import torch
from scipy import stats

from ddpm import GaussianDiffusion, NoiseSchedule
from ddpm.diffusion import discretized_gaussian_log_likelihood, normal_kl


@pytest.fixture(params=["linear", "cosine"])
def schedule(request):
    return NoiseSchedule.from_name(request.param, 1000)


def test_q_sample_marginals(schedule):
    """Empirical mean/variance of x_t equal √ᾱ_t x₀ and 1 − ᾱ_t (within 5 standard errors)."""
    d = GaussianDiffusion(schedule)
    n = 200_000
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((n, 1), 0.8, dtype=torch.float64)
    for t in (0, 10, 250, 999):
        xt = d.q_sample(x0, torch.full((n,), t), generator=g)
        ab = schedule.alphas_cumprod[t].item()
        var = 1 - ab
        assert abs(xt.mean().item() - math.sqrt(ab) * 0.8) < 5 * math.sqrt(var / n)
        assert abs(xt.var().item() - var) < 5 * var * math.sqrt(2 / n)


def test_chained_single_steps_match_closed_form(schedule):
    """Running q(x_t|x_{t−1}) = N(√α_t x_{t−1}, β_t) T times gives q(x_t|x₀) in distribution (KS test)."""
    n = 20_000
    g = torch.Generator().manual_seed(1)
    mu, s = 0.5, 0.3
    x = mu + s * torch.randn(n, generator=g, dtype=torch.float64)
    checkpoints = {0, 99, 499, 999}
    for t in range(1000):
        x = schedule.alphas[t].sqrt() * x + schedule.betas[t].sqrt() * torch.randn(
            n, generator=g, dtype=torch.float64
        )
        if t in checkpoints:
            ab = schedule.alphas_cumprod[t].item()
            ref = stats.norm(loc=math.sqrt(ab) * mu, scale=math.sqrt(ab * s**2 + 1 - ab))
            assert stats.kstest(x.numpy(), ref.cdf).pvalue > 1e-3, t


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_parameterizations_round_trip(prediction):
    d = GaussianDiffusion(NoiseSchedule.cosine(1000), prediction=prediction)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(6, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 100, 500, 900, 999])
    xt = d.q_sample(x0, t, eps)
    target = d.training_target(x0, eps, t)
    px0, peps = d.model_predictions(target, xt, t, clip_denoised=False)
    assert torch.allclose(px0, x0, atol=1e-7 if prediction != "eps" else 1e-5)
    tol = 1e-6 if prediction == "eps" else 1e-5
    assert torch.allclose(peps[t < 999], eps[t < 999], atol=tol)
    # p_mean_variance with a perfect model is the true posterior q(x_{t−1}|x_t, x₀).
    out = d.p_mean_variance(target, xt, t, clip_denoised=False)
    mean, var, _ = d.q_posterior(x0, xt, t)
    assert torch.allclose(out.mean, mean, atol=1e-5)
    assert torch.allclose(out.variance, var.expand_as(xt))


def test_v_identities():
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    g = torch.Generator().manual_seed(3)
    x0, eps = (
        torch.randn(4, 2, generator=g, dtype=torch.float64),
        torch.randn(4, 2, generator=g, dtype=torch.float64),
    )
    t = torch.tensor([3, 30, 300, 900])
    ab = d.schedule.alphas_cumprod[t][:, None]
    v = d.get_v(x0, eps, t)
    assert torch.allclose(v, ab.sqrt() * eps - (1 - ab).sqrt() * x0)
    assert torch.allclose(d.predict_x0_from_v(d.q_sample(x0, t, eps), t, v), x0)


def test_variance_choices():
    s = NoiseSchedule.linear(1000)
    x = torch.zeros(3, 2, 1, 1)
    t = torch.tensor([0, 1, 999])
    small = GaussianDiffusion(s, variance="fixed_small").p_mean_variance(torch.zeros(3, 2, 1, 1), x, t)
    large = GaussianDiffusion(s, variance="fixed_large").p_mean_variance(torch.zeros(3, 2, 1, 1), x, t)
    assert torch.allclose(small.variance[:, 0, 0, 0], s.posterior_variance[t].float())
    assert torch.allclose(large.variance[1:, 0, 0, 0], s.betas[t[1:]].float())
    assert large.variance[0, 0, 0, 0] == pytest.approx(s.posterior_variance[1].item())
    learned = GaussianDiffusion(s, variance="learned_range")
    for v, expect in ((1.0, s.betas.log()), (-1.0, s.posterior_log_variance_clipped)):
        out = learned.p_mean_variance(
            torch.cat([torch.zeros(3, 2, 1, 1), torch.full((3, 2, 1, 1), v)], 1), x, t
        )
        assert torch.allclose(out.log_variance[:, 0, 0, 0], expect[t].float(), atol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        learned.p_mean_variance(torch.zeros(3, 2, 1, 1), x, t)


def test_training_losses_per_example_and_zero_for_oracle():
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(5, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, 1000, (5,), generator=g)
    oracle = d.training_losses(lambda x, tt: noise, x0, t, noise)
    assert oracle["loss"].shape == (5,) and torch.all(oracle["loss"] == 0)
    zero = d.training_losses(lambda x, tt: torch.zeros_like(x), x0, t, noise)
    assert torch.allclose(zero["loss"], (noise**2).mean(dim=(1, 2, 3)))


def test_min_snr_weights():
    d = GaussianDiffusion(NoiseSchedule.linear(1000), prediction="v", weighting="min_snr", min_snr_gamma=5.0)
    t = torch.tensor([0, 999])
    snr = d.schedule.alphas_cumprod[t] / (1 - d.schedule.alphas_cumprod[t])
    assert torch.allclose(d.mse_weight(t).double(), snr.clamp(max=5) / (snr + 1), rtol=1e-6)


def test_hybrid_loss_stops_gradient_on_mean():
    d = GaussianDiffusion(NoiseSchedule.cosine(100), variance="learned_range", loss="hybrid")
    x0 = torch.rand(4, 1, 2, 2) * 2 - 1
    out = torch.zeros(4, 2, 2, 2, requires_grad=True)
    terms = d.training_losses(lambda x, t: out, x0, torch.tensor([0, 5, 50, 99]))
    terms["vb"].sum().backward()
    assert out.grad[:, :1].abs().max() == 0  # the mean half gets no VLB gradient
    assert out.grad[:, 1:].abs().max() > 0
    with pytest.raises(ValueError):
        GaussianDiffusion(NoiseSchedule.cosine(100), loss="hybrid")


def test_normal_kl_against_integration():
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.2, math.log(1.7)
    x = torch.linspace(-15, 15, 300001, dtype=torch.float64)
    p = torch.distributions.Normal(m1, math.exp(0.5 * lv1))
    q = torch.distributions.Normal(m2, math.exp(0.5 * lv2))
    integrand = p.log_prob(x).exp() * (p.log_prob(x) - q.log_prob(x))
    numeric = torch.trapezoid(integrand, x).item()
    kl = normal_kl(*(torch.tensor(v, dtype=torch.float64) for v in (m1, lv1, m2, lv2))).item()
    assert kl == pytest.approx(numeric, rel=1e-6)


@pytest.mark.parametrize(
    "mean,log_scale",
    [(0.0, math.log(0.01)), (0.5, math.log(0.2)), (-0.99, math.log(0.05)), (0.1, math.log(1e-4))],
)
def test_discretized_gaussian_bins_sum_to_one(mean, log_scale):
    pixels = (torch.arange(256, dtype=torch.float64) * 2 - 255) / 255
    logp = discretized_gaussian_log_likelihood(
        pixels, torch.full_like(pixels, mean), torch.full_like(pixels, log_scale)
    )
    assert torch.isfinite(logp).all()
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    # Each inner bin equals Φ((x + 1/255 − μ)/σ) − Φ((x − 1/255 − μ)/σ).
    sd = math.exp(log_scale)
    k = 128
    hi, lo = (pixels[k].item() + 1 / 255 - mean) / sd, (pixels[k].item() - 1 / 255 - mean) / sd
    ref = stats.norm.sf(lo) - stats.norm.sf(hi) if lo > 0 else stats.norm.cdf(hi) - stats.norm.cdf(lo)
    assert logp[k].exp().item() == pytest.approx(ref, rel=1e-6, abs=1e-300)


def test_prior_bpd_closed_form():
    d = GaussianDiffusion(NoiseSchedule.linear(1000))
    x0 = torch.ones(2, 1, 3, 3)
    ab = d.schedule.alphas_cumprod[-1].item()
    # KL(N(√ᾱ, 1−ᾱ) ‖ N(0, 1)) = ½(ᾱ + (1−ᾱ) − 1 − log(1−ᾱ)) per dim for x₀ = 1.
    expected = 0.5 * (ab + (1 - ab) - 1 - math.log(1 - ab)) / math.log(2)
    assert torch.allclose(d.prior_bpd(x0), torch.full((2,), expected), rtol=1e-4)


def test_bad_options():
    s = NoiseSchedule.linear(10)
    for kw in ({"prediction": "score"}, {"variance": "learned"}, {"loss": "l1"}, {"weighting": "snr"}):
        with pytest.raises(ValueError):
            GaussianDiffusion(s, **kw)
