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


# --------------------------------------------------------------------------- losses against hand computations
def _by_hand(betas: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
    """Ho et al. eq. 4 and 6–7 from β alone, in float64, at indices t [N] (index t holds β_{t+1}): [N, 1, 1, 1]."""
    b = betas.double()
    ab = torch.cumprod(1 - b, 0)
    ab_prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    post_var = b * (1 - ab_prev) / (1 - ab)
    # β̃ is 0 at index 0; its log is taken from index 1 there (Ho et al.'s and improved-diffusion's clip).
    post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    return {
        k: v[t].view(-1, 1, 1, 1)
        for k, v in dict(beta=b, ab=ab, ab_prev=ab_prev, post_var=post_var, post_log_var=post_log_var).items()
    }


def _vlb_term_by_hand(c, t, x0, x_t, eps_hat, v_out) -> torch.Tensor:
    """L_t in bits/dim per example [N] for an ε-prediction network with Improved DDPM's learned Σ (eq. 15).

    t > 0: KL(q(x_{t−1}|x_t, x₀) ‖ p_θ(x_{t−1}|x_t)) between two Gaussians in closed form; t = 0: −log p_θ(x₀|x₁)
    under the discretized decoder of Ho et al. §3.3 (bins of width 2/255, the edge bins open to ±∞).
    """
    ab, ab_prev, beta = c["ab"], c["ab_prev"], c["beta"]
    x0_hat = (x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt()
    coef_x0, coef_xt = beta * ab_prev.sqrt() / (1 - ab), (1 - ab_prev) * (1 - beta).sqrt() / (1 - ab)
    mu_q, mu_p = coef_x0 * x0 + coef_xt * x_t, coef_x0 * x0_hat + coef_xt * x_t
    frac = (v_out + 1) / 2
    lv_p, lv_q = frac * torch.log(beta) + (1 - frac) * c["post_log_var"], c["post_log_var"]
    kl = 0.5 * (-1 + lv_p - lv_q + torch.exp(lv_q - lv_p) + (mu_q - mu_p) ** 2 * torch.exp(-lv_p))
    sd, zero = torch.exp(0.5 * lv_p), t == 0  # the decoder only where t = 0 (elsewhere its bins underflow)
    x, mu, sd = x0[zero], mu_p[zero], sd[zero]
    upper = torch.where(x > 0.999, torch.inf, (x + 1 / 255 - mu) / sd)
    lower = torch.where(x < -0.999, -torch.inf, (x - 1 / 255 - mu) / sd)
    decoder_nll = -torch.log(torch.special.ndtr(upper) - torch.special.ndtr(lower))
    per_example = torch.zeros(len(t), dtype=kl.dtype)
    per_example = per_example.index_put((zero.nonzero()[:, 0],), decoder_nll.flatten(1).mean(1))
    per_example = per_example.index_put(((~zero).nonzero()[:, 0],), kl[~zero].flatten(1).mean(1))
    return per_example / math.log(2)


def _assert_rows_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> None:
    """‖a_i − b_i‖ ≤ rtol·‖b_i‖ for every example i (float32 code against a float64 hand computation)."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    err, scale = (a - b).norm(dim=1), b.norm(dim=1)
    assert (err <= rtol * scale).all(), (err / scale).tolist()


def _learned_variance_case():
    """Fixed 8-bit images (both edge bins used), noise, t (0 twice) and an ε / variance output near the truth."""
    T = 50
    g = torch.Generator().manual_seed(11)
    x0 = (torch.randint(0, 256, (6, 2, 3, 3), generator=g) * 2 - 255).float() / 255
    x0[0, 0, 0, :2] = torch.tensor([-1.0, 1.0])
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 0, 1, 7, T // 2, T - 1])
    eps_hat = noise + 0.3 * torch.randn(x0.shape, generator=g)
    v_out = torch.rand(x0.shape, generator=g) * 2 - 1
    return NoiseSchedule.cosine(T), x0, noise, t, torch.cat([eps_hat, v_out], dim=1)


def test_hybrid_loss_is_l_simple_plus_lambda_T_l_t():
    """Improved DDPM §3.1: L_hybrid = L_simple + λ L_vlb with λ = 0.001, L_vlb estimated at a uniform t as T·L_t
    (improved-diffusion: ``vb * num_timesteps / 1000``), the mean frozen in the L_vlb term; L_t in bits/dim."""
    from ddpm.config import DiffusionConfig, get_preset, preset_names
    from ddpm.train import build_diffusion

    schedule, x0, noise, t, out = _learned_variance_case()
    T, C = len(schedule), x0.shape[1]
    c = _by_hand(schedule.betas, t)
    x0d, noised = x0.double(), noise.double()
    x_t = c["ab"].sqrt() * x0d + (1 - c["ab"]).sqrt() * noised

    def by_hand(output, stop_gradient):
        eps_hat, v_out = output[:, :C].double(), output[:, C:].double()
        l_simple = ((noised - eps_hat) ** 2).flatten(1).mean(1)
        l_t = _vlb_term_by_hand(c, t, x0d, x_t, eps_hat.detach() if stop_gradient else eps_hat, v_out)
        return l_simple, l_t

    config_default = DiffusionConfig(schedule="cosine", timesteps=T, variance="learned_range", loss="hybrid")
    assert config_default.vlb_weight == 0.001
    for d in (
        GaussianDiffusion(schedule, variance="learned_range", loss="hybrid"),
        build_diffusion(config_default),
    ):
        assert d.vlb_weight == 0.001
        net_out = out.clone().requires_grad_(True)
        terms = d.training_losses(lambda x, tt, o=net_out: o, x0, t, noise)
        hand_out = out.clone().requires_grad_(True)
        l_simple, l_t = by_hand(hand_out, stop_gradient=True)
        expected = l_simple + 0.001 * T * l_t
        assert (0.001 * T * l_t > 1e-3 * l_simple).all()  # the VLB part is 10× the tolerance below, or more
        assert torch.allclose(terms["mse"].double(), l_simple, rtol=1e-5)
        assert torch.allclose(terms["vb"].double(), T * l_t, rtol=1e-4)
        assert torch.allclose(terms["loss"].double(), expected, rtol=1e-4)
        terms["loss"].sum().backward()
        expected.sum().backward()
        # the ε channels see only L_simple, the variance channels only λ·T·L_t
        _assert_rows_close(net_out.grad, hand_out.grad)
    # L_vlb alone trains mean and variance together: T·L_t, no stop-gradient
    d = GaussianDiffusion(schedule, variance="learned_range", loss="vlb")
    net_out, hand_out = out.clone().requires_grad_(True), out.clone().requires_grad_(True)
    terms = d.training_losses(lambda x, tt: net_out, x0, t, noise)
    l_t = by_hand(hand_out, stop_gradient=False)[1]
    assert torch.allclose(terms["loss"].double(), T * l_t, rtol=1e-4)
    terms["loss"].sum().backward()
    (T * l_t).sum().backward()
    _assert_rows_close(net_out.grad, hand_out.grad)
    assert net_out.grad[:, :C].abs().max() > 0
    # every hybrid preset uses the paper's λ
    hybrid = [n for n in preset_names() if get_preset(n).diffusion.loss == "hybrid"]
    assert hybrid and all(get_preset(n).diffusion.vlb_weight == 0.001 for n in hybrid), hybrid


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_loss_is_hang_et_al_in_every_parameterization(prediction):
    """Min-SNR-γ (Hang et al. 2023): the loss is min(SNR_t, γ)·‖x₀ − x̂₀‖², whatever the network predicts.

    The MSE is taken in the prediction's own space, where ‖ε − ε̂‖² = SNR_t ‖x₀ − x̂₀‖² and
    ‖v − v̂‖² = (SNR_t + 1) ‖x₀ − x̂₀‖², so the weight is min(SNR, γ)/SNR for ε, min(SNR, γ) for x₀ and
    min(SNR, γ)/(SNR + 1) for v.
    """
    gamma = 5.0
    schedule = NoiseSchedule.linear(1000)
    d = GaussianDiffusion(schedule, prediction=prediction, weighting="min_snr", min_snr_gamma=gamma)
    t = torch.tensor([0, 40, 100, 130, 200, 500, 999])
    c = _by_hand(schedule.betas, t)
    ab = c["ab"]
    snr = (ab / (1 - ab)).flatten()
    assert (snr > 2 * gamma).any() and (snr < gamma / 2).any()  # the clip bites at some t and not at others
    g = torch.Generator().manual_seed(5)
    x0 = torch.rand(len(t), 2, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    out = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    target = {"eps": noise, "x0": x0, "v": ab.sqrt() * noise - (1 - ab).sqrt() * x0}[prediction]
    mse = ((target - out) ** 2).flatten(1).mean(1)
    clipped = snr.clamp(max=gamma)
    weight = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}[prediction]
    x0_hat = {
        "eps": (x_t - (1 - ab).sqrt() * out) / ab.sqrt(),
        "x0": out,
        "v": ab.sqrt() * x_t - (1 - ab).sqrt() * out,
    }[prediction]

    terms = d.training_losses(lambda x, tt: out, x0, t, noise)
    assert torch.allclose(d.mse_weight(t).double(), weight, rtol=1e-6)
    assert torch.allclose(terms["mse"].double(), mse, rtol=1e-5)
    assert torch.allclose(terms["loss"].double(), weight * mse, rtol=1e-5)
    assert torch.allclose(
        terms["loss"].double(), clipped * ((x0 - x0_hat) ** 2).flatten(1).mean(1), rtol=1e-5
    )
    plain = GaussianDiffusion(schedule, prediction=prediction).training_losses(
        lambda x, tt: out, x0, t, noise
    )
    assert torch.allclose(plain["loss"].double(), mse, rtol=1e-5)  # no weighting: L_simple in that space


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
