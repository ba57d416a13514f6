"""Improved DDPM and conditional generation: the Gaussian KL and discretized log-likelihood against closed forms and
numerical integration, learned-range variances, the hybrid loss's VLB term, classifier-free guidance limits, the
loss-aware timestep resampler, and a class-conditional model trained and sampled through the CLI."""

import json
import math

import numpy as np
import pytest
import torch

from ddpm.cli import main
from ddpm.config import apply_overrides, get_preset
from ddpm.diffusion import GaussianDiffusion, discretized_gaussian_log_likelihood, normal_kl
from ddpm.nn.presets import unet
from ddpm.resample import (
    LossSecondMomentResampler,
    UniformSampler,
    create_timestep_sampler,
)
from ddpm.sampling import classifier_free_guidance, sample
from ddpm.schedule import NoiseSchedule
from ddpm.train import Trainer

pytestmark = pytest.mark.usefixtures("one_thread_module")  # was set at import, leaking into the whole run


# --------------------------------------------------------------------------- KL and decoder likelihood
def test_normal_kl_closed_form_elementwise():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(2, 50, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(2, 50, generator=g, dtype=torch.float64)
    p = torch.distributions.Normal(m1, torch.exp(0.5 * lv1))
    q = torch.distributions.Normal(m2, torch.exp(0.5 * lv2))
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), torch.distributions.kl_divergence(p, q), rtol=1e-12)
    assert torch.allclose(normal_kl(m1, lv1, m1, lv1), torch.zeros(50, dtype=torch.float64), atol=1e-15)
    assert (normal_kl(m1, lv1, m2, lv2) >= 0).all()
    # Broadcasting: a [N, 1] log-variance against a [N, D] mean, as the posterior's variance is used.
    kl = normal_kl(m1.view(5, 10), lv1[:5].view(5, 1), m2.view(5, 10), lv2[:5].view(5, 1))
    assert kl.shape == (5, 10)


def _bin_probability_by_integration(x: float, mean: float, sd: float) -> float:
    """∫ N(u; mean, sd²) du over the pixel's bin [x − 1/255, x + 1/255], the edge bins extended to ±∞."""
    lo = x - 1 / 255 if x > -0.999 else mean - 40 * sd
    hi = x + 1 / 255 if x < 0.999 else mean + 40 * sd
    if hi <= lo:
        return 0.0
    u = torch.linspace(lo, hi, 200_001, dtype=torch.float64)
    pdf = torch.exp(-0.5 * ((u - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    return torch.trapezoid(pdf, u).item()


@pytest.mark.parametrize(
    "mean,sd", [(0.2, 0.3), (-0.98, 0.03), (0.97, 0.05), (0.0, 2.0), (0.5, 0.004), (-1.2, 0.5)]
)
def test_discretized_gaussian_against_integration(mean, sd):
    ks = torch.tensor([0, 1, 2, 60, 127, 128, 190, 253, 254, 255])
    x = (ks.double() * 2 - 255) / 255
    logp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, math.log(sd)))
    for xi, lp in zip(x.tolist(), logp.tolist(), strict=True):
        ref = _bin_probability_by_integration(xi, mean, sd)
        if ref > 1e-12:
            assert lp == pytest.approx(math.log(ref), abs=1e-6), (xi, mean, sd)
        else:
            assert lp < math.log(1e-10)


def test_discretized_gaussian_limits():
    x = torch.tensor([(2 * 100 - 255) / 255], dtype=torch.float64)
    # σ much smaller than a bin, centred on it: all the mass is in the bin.
    assert discretized_gaussian_log_likelihood(x, x, torch.tensor([math.log(1e-4)])).item() == pytest.approx(
        0.0, abs=1e-12
    )
    # σ much larger than a bin: log p ≈ log(pdf(x)·2/255), the midpoint rule.
    sd, mean = 0.5, 0.1
    lp = discretized_gaussian_log_likelihood(x, torch.tensor([mean]), torch.tensor([math.log(sd)])).item()
    pdf = math.exp(-0.5 * ((x.item() - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    assert lp == pytest.approx(math.log(pdf * 2 / 255), abs=1e-4)


# --------------------------------------------------------------------------- learned-range variance
def test_learned_range_interpolation_endpoints_and_midpoint():
    s = NoiseSchedule.cosine(100)
    x = torch.zeros(4, 1, 2, 2)
    t = torch.tensor([0, 1, 50, 99])
    for d in (
        GaussianDiffusion(s, variance="learned_range"),
        GaussianDiffusion(s, variance="learned_range").respaced([0, 10, 20, 40, 60, 80, 99]),
    ):
        t_d = t.clamp(max=d.num_timesteps - 1)
        log_beta = torch.log(d.schedule.betas)[t_d].float()
        log_tilde = d.schedule.posterior_log_variance_clipped[t_d].float()

        def log_var(v, d=d, t_d=t_d):
            out = torch.cat([torch.zeros_like(x), torch.full_like(x, v)], dim=1)
            return d.p_mean_variance(out, x, t_d, clip_denoised=False).log_variance[:, 0, 0, 0]

        assert torch.allclose(log_var(1.0), log_beta, atol=1e-6)
        assert torch.allclose(log_var(-1.0), log_tilde, atol=1e-6)
        assert torch.allclose(log_var(0.0), 0.5 * (log_beta + log_tilde), atol=1e-6)
        # t = 0: β̃_0 = 0, so the lower end is the clipped log β̃_1.
        assert log_tilde[0] == pytest.approx(math.log(d.schedule.posterior_variance[1].item()), rel=1e-6)


def _hybrid_case():
    """A learned-variance diffusion, data, t > 0, and a mean error chosen so the optimal variance is the
    geometric midpoint √(β_t β̃_t) of the learned range (v* = 0): σ*² = β̃_t + (μ − μ̃)²."""
    d = GaussianDiffusion(NoiseSchedule.cosine(100), variance="learned_range", loss="hybrid")
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 1, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([2, 10, 40, 70])
    s = d.schedule
    beta, tilde = s.betas[t], s.posterior_variance[t]
    # μ depends on ε̂ through x̂₀: dμ/dε̂ = −coef1 · √(1/ᾱ − 1).
    slope = s.posterior_mean_coef1[t] * s.sqrt_recipm1_alphas_cumprod[t]
    delta = torch.sqrt(torch.sqrt(beta * tilde) - tilde) / slope
    eps_hat = noise + delta.float().view(-1, 1, 1, 1)
    return d, x0, noise, t, eps_hat


def _vb(d, x0, noise, t, eps_hat, v):
    out = torch.cat([eps_hat, v if torch.is_tensor(v) else torch.full_like(eps_hat, v)], dim=1)
    return d.training_losses(lambda x, tt: out, x0, t, noise), out


def test_hybrid_vlb_term_decreases_towards_the_optimal_variance():
    d, x0, noise, t, eps_hat = _hybrid_case()
    vs = [-1.0, -0.6, -0.2, 0.0, 0.2, 0.6, 1.0]
    vb = torch.stack([_vb(d, x0, noise, t, eps_hat, v)[0]["vb"] for v in vs])  # [len(vs), N]
    k = vs.index(0.0)
    assert (vb[1 : k + 1] < vb[:k]).all(), "falls while v rises to the optimum"
    assert (vb[k + 1 :] > vb[k:-1]).all(), "rises after it"
    # The hybrid loss's gradient on the variance channels points towards the optimum from either side, and a
    # small step along it lowers the VLB term.
    for start in (0.8, -0.8):
        v = torch.full_like(eps_hat, start, requires_grad=True)
        terms, _ = _vb(d, x0, noise, t, eps_hat, v)
        terms["loss"].sum().backward()
        assert (torch.sign(v.grad) == math.copysign(1.0, start)).all()
        stepped = (v - 0.1 * torch.sign(v.grad)).detach()
        assert (_vb(d, x0, noise, t, eps_hat, stepped)[0]["vb"] < terms["vb"].detach()).all()


def test_hybrid_vlb_term_is_zero_at_the_exact_posterior():
    d, x0, noise, t, _ = _hybrid_case()
    terms, _ = _vb(d, x0, noise, t, noise, -1.0)  # exact ε and Σ = β̃_t: p_θ equals q(x_{t−1}|x_t, x₀)
    assert torch.allclose(terms["vb"], torch.zeros(4), atol=1e-5)
    assert (_vb(d, x0, noise, t, noise, 0.5)[0]["vb"] > 1e-4).all()


# --------------------------------------------------------------------------- classifier-free guidance
C, K = 2, 3  # channels, classes (label K is the null label)


def _toy_model(learned: bool):
    """A class-dependent network stand-in: affine in x, with a per-class offset (and variance channels)."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(K + 1, 2 * C, generator=g)

    def model(x, t, y):
        a = table[y][:, :, None, None]
        s = torch.sin(t.float() / 7)[:, None, None, None]
        mean = 0.3 * x * s + a[:, :C]
        if not learned:
            return mean
        return torch.cat([mean, torch.tanh(a[:, C:] + 0.1 * x)], dim=1)

    return model


@pytest.mark.parametrize("method", ["ddpm", "ddim", "dpmpp_2m"])
@pytest.mark.parametrize("learned", [False, True])
def test_guidance_limits(method, learned):
    d = GaussianDiffusion(NoiseSchedule.cosine(50), variance="learned_range" if learned else "fixed_small")
    model = _toy_model(learned)
    y = torch.tensor([0, 1, 2, 1])
    null = torch.full_like(y, K)
    noise = torch.randn(4, C, 3, 3, generator=torch.Generator().manual_seed(1))
    channels = C if learned else None

    def run(fn):
        eta = 1.0 if method == "ddim" else 0.0
        g = torch.Generator().manual_seed(2)
        return sample(fn, d, None, method=method, steps=8, eta=eta, noise=noise, generator=g)

    conditional = run(lambda x, t: model(x, t, y))
    assert torch.equal(run(classifier_free_guidance(model, y, 0.0, K, channels)), conditional)

    def unconditional(x, t):
        out = model(x, t, null)
        # Learned variances: the mean channels come from the null label, the variance from the conditional branch.
        return torch.cat([out[:, :C], model(x, t, y)[:, C:]], dim=1) if learned else out

    guided = run(classifier_free_guidance(model, y, -1.0, K, channels))
    assert torch.allclose(guided, run(unconditional), atol=1e-6)
    assert not torch.allclose(guided, conditional, atol=1e-3)


def test_guidance_formula_on_one_call():
    model = _toy_model(learned=True)
    y = torch.tensor([2, 0])
    x, t = torch.randn(2, C, 3, 3), torch.tensor([5, 30])
    out = classifier_free_guidance(model, y, 2.5, K, channels=C)(x, t)
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, K))
    assert torch.allclose(out[:, :C], 3.5 * cond[:, :C] - 2.5 * uncond[:, :C], atol=1e-6)
    assert torch.equal(out[:, C:], cond[:, C:])


def test_guidance_limits_with_a_conditional_unet():
    torch.manual_seed(0)
    net = unet("tiny", num_classes=K, zero_init=False, out_channels=2).eval()  # learned variance: 2·C outputs
    d = GaussianDiffusion(NoiseSchedule.linear(20), variance="learned_range")
    y = torch.tensor([0, 1, 2])
    noise = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))

    def run(fn):
        return sample(
            fn, d, None, method="ddpm", steps=4, noise=noise, generator=torch.Generator().manual_seed(2)
        )

    with torch.no_grad():
        assert torch.equal(run(classifier_free_guidance(net, y, 0.0, K, 1)), run(lambda x, t: net(x, t, y)))
        uncond = run(lambda x, t: torch.cat([net(x, t, None)[:, :1], net(x, t, y)[:, 1:]], dim=1))
        assert torch.allclose(run(classifier_free_guidance(net, y, -1.0, K, 1)), uncond, atol=1e-5)


# --------------------------------------------------------------------------- timestep resampler
def _filled(T: int, table: torch.Tensor) -> LossSecondMomentResampler:
    s = LossSecondMomentResampler(GaussianDiffusion(NoiseSchedule.linear(T)))
    for j in range(table.shape[1]):
        s.update_with_losses(torch.arange(T), table[:, j])
    return s


def _table(T: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    spread = torch.ones(T, 1, dtype=torch.float64)
    spread[:5] = 30.0  # the first five timesteps have much larger (and more variable) losses
    return torch.rand(T, 10, generator=g, dtype=torch.float64) * spread


def test_resampler_is_unbiased_by_exact_enumeration():
    T = 20
    table = _table(T)
    s = _filled(T, table)
    assert s.warmed_up
    p = s.probabilities()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    w = 1.0 / (T * p)
    for L in (table.mean(dim=1), table[:, -1], torch.linspace(0, 5, T, dtype=torch.float64)):
        # E_{t~p}[w_t L_t] = Σ_t p_t w_t L_t = (1/T) Σ_t L_t, whatever the fixed loss table is.
        assert (p * w * L).sum().item() == pytest.approx(L.mean().item(), rel=1e-12)
    t, weights = s.sample(5000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and weights.dtype == torch.float32
    assert torch.allclose(weights.double(), w[t], rtol=1e-6)
    L = table.mean(dim=1)
    assert (weights.double() * L[t]).mean().item() == pytest.approx(L.mean().item(), rel=0.05)


def test_resampler_focuses_on_high_variance_timesteps():
    T = 20
    table = _table(T)
    s = _filled(T, table)
    p = s.probabilities()
    second_moment = torch.sqrt((table**2).mean(dim=1))
    expected = 0.999 * second_moment / second_moment.sum() + 0.001 / T
    assert torch.allclose(p, expected, rtol=1e-12)
    assert p[:5].min() > 5 * p[5:].max()
    t, _ = s.sample(20_000, generator=torch.Generator().manual_seed(1))
    assert (t < 5).double().mean().item() == pytest.approx(p[:5].sum().item(), abs=0.02)
    # Every timestep keeps at least the uniform share.
    assert p.min().item() >= 0.001 / T


def test_resampler_is_uniform_until_every_timestep_has_its_history():
    T = 6
    d = GaussianDiffusion(NoiseSchedule.linear(T))
    s = LossSecondMomentResampler(d)
    for _ in range(9):
        s.update_with_losses(torch.arange(T), torch.rand(T))
    s.update_with_losses(torch.arange(T - 1), torch.rand(T - 1))  # the last t has only 9 losses
    assert not s.warmed_up
    t, w = s.sample(64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(t, d.sample_timesteps(64, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(w, torch.ones(64))
    s.update_with_losses(torch.tensor([T - 1]), torch.tensor([1.0]))
    assert s.warmed_up


def test_resampler_keeps_the_newest_losses_and_skips_nonfinite():
    s = LossSecondMomentResampler(GaussianDiffusion(NoiseSchedule.linear(3)), history=4)
    s.update_with_losses(torch.zeros(7, dtype=torch.long), torch.arange(7.0))
    s.update_with_losses(torch.tensor([0, 0]), torch.tensor([float("nan"), float("inf")]))
    st = s.state_dict()
    assert st["losses"][0].tolist() == [3.0, 4.0, 5.0, 6.0] and st["counts"].tolist() == [4, 0, 0]


def test_resampler_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    T = 20
    s = _filled(T, _table(T))
    torch.save({"timestep_sampler": s.state_dict()}, tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)["timestep_sampler"]
    r = LossSecondMomentResampler(GaussianDiffusion(NoiseSchedule.linear(T)))
    r.load_state_dict(loaded)
    assert torch.equal(r.probabilities(), s.probabilities())
    for k in (s, r):
        k.update_with_losses(torch.tensor([3, 3, 7]), torch.tensor([2.0, 9.0, 0.5]))
    a = s.sample(100, generator=torch.Generator().manual_seed(9))
    b = r.sample(100, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="shape"):
        LossSecondMomentResampler(GaussianDiffusion(NoiseSchedule.linear(T + 1))).load_state_dict(loaded)
    with pytest.raises(ValueError):
        UniformSampler(GaussianDiffusion(NoiseSchedule.linear(T))).load_state_dict(loaded)


def test_uniform_sampler_draws_what_the_diffusion_draws():
    d = GaussianDiffusion(NoiseSchedule.linear(50))
    u = create_timestep_sampler("uniform", d)
    t, w = u.sample(33, generator=torch.Generator().manual_seed(4))
    assert torch.equal(t, d.sample_timesteps(33, generator=torch.Generator().manual_seed(4)))
    assert torch.equal(w, torch.ones(33)) and u.state_dict() == {}
    assert isinstance(create_timestep_sampler("loss_aware", d), LossSecondMomentResampler)
    with pytest.raises(ValueError, match="unknown timestep sampler"):
        create_timestep_sampler("importance", d)


def _losses(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def test_loss_aware_training_resumes_exactly(tmp_path):
    cfg = apply_overrides(
        get_preset("tiny"),
        [
            "data.limit=200",
            "train.log_every=1",
            "train.val_every=none",
            "diffusion.timesteps=4",
            "diffusion.variance=learned_range",
            "diffusion.loss=vlb",
            "diffusion.timestep_sampler=loss_aware",
            "train.max_steps=10",
            "train.checkpoint_every=5",
            "train.threads=1",  # bit-exact: a fixed thread count (auto may switch counts mid-run)
        ],
    )
    full = Trainer(cfg, tmp_path / "full", progress=False)
    full.fit()
    assert full.timestep_sampler.warmed_up
    cut = Trainer(apply_overrides(cfg, ["train.max_steps=5"]), tmp_path / "cut", progress=False)
    cut.fit()
    assert cut.timestep_sampler.warmed_up, "the resumed half must run on the learned p"
    resumed = Trainer(cfg, tmp_path / "cut", resume=True, progress=False)
    assert torch.equal(resumed.timestep_sampler.probabilities(), cut.timestep_sampler.probabilities())
    resumed.fit()
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "cut")
    assert sorted(a) == sorted(b) == list(range(1, 11))
    assert all(a[k] == b[k] for k in a), [(k, a[k], b[k]) for k in a if a[k] != b[k]]


# --------------------------------------------------------------------------- conditional end to end
def test_conditional_tiny_model_trains_and_samples_classes_through_the_cli(tmp_path, capsys):
    run = tmp_path / "cond"
    code = main(
        [
            "train",
            "--preset",
            "tiny",
            "--out",
            str(run),
            "--max-steps",
            "4",
            "--no-progress",
            "--set",
            "model.num_classes=10",
            "--set",
            "data.limit=200",
            "--set",
            "train.checkpoint_every=4",
            "--set",
            "diffusion.variance=learned_range",
            "--set",
            "diffusion.loss=hybrid",
        ]
    )
    assert code == 0, capsys.readouterr().err
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["num_classes"] == 10 and saved["model"]["out_channels"] == 2
    for cls, guidance, n in (("3", "2.0", 4), ("all", "0", 10), ("7", "-1", 2)):
        out = tmp_path / f"s{cls}.npz"
        code = main(
            [
                "sample",
                "--run",
                str(run),
                "--n",
                str(n),
                "--steps",
                "3",
                "--class",
                cls,
                "--guidance",
                guidance,
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        assert code == 0, capsys.readouterr().err
        with np.load(out) as f:
            assert f["x"].shape == (n, 16, 16, 1) and f["x"].dtype == np.uint8
            expected = np.arange(n) % 10 if cls == "all" else np.full(n, int(cls))
            assert np.array_equal(f["y"], expected)
    capsys.readouterr()
    assert main(["sample", "--run", str(run), "--n", "2", "--class", "10", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "out of range" in err and len(err.strip().splitlines()) == 1
