"""Editing (ddpm.editing) against exact answers: Gaussian data x ~ N(μ, Σ) over 2×2 pixels with a full, strongly
correlated Σ, whose exact ε-predictor is ε*(x, t) = √(1−ᾱ_t) (ᾱ_t Σ + (1−ᾱ_t) I)⁻¹ (x − √ᾱ_t μ).

With it: inpainting has the conditional Gaussian as its answer, SDEdit with the ancestral sampler the law
∫ q(x_t | x) p(x₀ | x_t) dx_t and with an ODE sampler the probability-flow map, and DDIM inversion the inverse of
that map (all closed forms below)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ddpm
from conftest import run_cli
from ddpm import GaussianDiffusion, NoiseSchedule
from ddpm.editing import (
    EditError,
    inpaint,
    interpolate,
    invert,
    jump_schedule,
    sdedit,
    slerp,
    strength_timestep,
)

pytestmark = pytest.mark.usefixtures("one_thread_module")

D = 4  # pixels of a [N, 1, 2, 2] image
_L = torch.tensor(
    [[1.0, 0, 0, 0], [0.9, 0.44, 0, 0], [0.8, 0.3, 0.5, 0], [0.7, 0.5, 0.2, 0.45]], dtype=torch.float64
)
SIGMA = 0.25 * _L @ _L.T  # correlations 0.8–0.9 between the known and the unknown pixels
MU = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
KNOWN, UNKNOWN = [0, 1], [2, 3]
X_KNOWN = torch.tensor([0.8, 0.6], dtype=torch.float64)


def _sym_fn(S: torch.Tensor, f) -> torch.Tensor:
    s, U = torch.linalg.eigh(S)
    return U @ torch.diag(f(s)) @ U.T


class Oracle:
    """The exact ε-predictor of N(μ, Σ) data for ``diffusion`` (any prediction type is read from ε)."""

    def __init__(self, diffusion: GaussianDiffusion) -> None:
        self.ab = diffusion.schedule.alphas_cumprod
        s, U = torch.linalg.eigh(SIGMA)
        inv = 1.0 / (self.ab[:, None] * s[None] + 1 - self.ab[:, None])  # [T, D]
        self.M = torch.einsum("ij,tj,kj->tik", U, inv, U)  # (ᾱ_t Σ + (1 − ᾱ_t) I)⁻¹

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.ab[t][:, None]
        r = x.reshape(x.shape[0], D).double() - a.sqrt() * MU
        return ((1 - a).sqrt() * torch.einsum("nij,nj->ni", self.M[t], r)).reshape(x.shape).to(x.dtype)


def linear() -> GaussianDiffusion:
    return GaussianDiffusion(NoiseSchedule.linear(1000))


def images(flat: torch.Tensor) -> torch.Tensor:
    return flat.float().reshape(-1, 1, 2, 2)


def flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], D).double()


def gaussian_kl(m: torch.Tensor, C: torch.Tensor, m_ref: torch.Tensor, C_ref: torch.Tensor) -> float:
    """KL(N(m, C) ‖ N(m_ref, C_ref)): the error of a Gaussian fit to samples against the exact answer."""
    inv = torch.linalg.inv(C_ref)
    dm = m_ref - m
    k = len(m)
    return 0.5 * float(torch.trace(inv @ C) + dm @ inv @ dm - k + torch.logdet(C_ref) - torch.logdet(C))


# --------------------------------------------------------------------------- inpainting (RePaint)
def conditional() -> tuple[torch.Tensor, torch.Tensor]:
    """N(μ_u + Σ_uk Σ_kk⁻¹ (x_k − μ_k), Σ_uu − Σ_uk Σ_kk⁻¹ Σ_ku): the exact law of the unknown pixels."""
    Skk, Suk, Suu = SIGMA[KNOWN][:, KNOWN], SIGMA[UNKNOWN][:, KNOWN], SIGMA[UNKNOWN][:, UNKNOWN]
    return MU[UNKNOWN] + Suk @ torch.linalg.solve(Skk, X_KNOWN - MU[KNOWN]), Suu - Suk @ torch.linalg.solve(
        Skk, Suk.T
    )


N_INPAINT = 4000


def inpaint_error(steps: int | None, jump_length: int, jump_n_sample: int, seed: int = 1) -> float:
    """KL of the Gaussian fit to N_INPAINT completions from the exact conditional. Its sampling noise (seeds) is
    about 0.01 at the errors measured here; the differences asserted below are tens of times larger."""
    d = linear()
    x0 = torch.zeros(N_INPAINT, D, dtype=torch.float64)
    x0[:, KNOWN] = X_KNOWN
    x0 = images(x0)
    mask = images(torch.tensor([1.0, 1.0, 0.0, 0.0]))
    out = inpaint(
        Oracle(d), d, x0, mask, steps, jump_length, jump_n_sample,
        generator=torch.Generator().manual_seed(seed), clip_denoised=False,
    )  # fmt: skip
    assert torch.equal(flat(out)[:, KNOWN], flat(x0)[:, KNOWN])  # known pixels returned exactly
    xu = flat(out)[:, UNKNOWN]
    m_ref, C_ref = conditional()
    return gaussian_kl(xu.mean(0), torch.cov(xu.T), m_ref, C_ref)


def test_repaint_error_shrinks_with_steps_and_jumps_and_beats_plain_replacement():
    """RePaint is an approximation: its error shrinks with the resampling count (jumps of 5 grid steps, 100
    steps) and with the number of steps (4 resamplings); plain replacement (jump_n_sample = 1) stays an order of
    magnitude worse however many steps it takes (at all 1000 too): the known pixels are noised independently of
    the unknown ones at each step, so the model never sees them harmonised — why RePaint resamples."""
    by_jumps = [inpaint_error(100, 5, u) for u in (1, 2, 4, 8)]
    assert all(b < 0.75 * a for a, b in zip(by_jumps, by_jumps[1:], strict=False)), by_jumps
    by_steps = [inpaint_error(s, 5, 4) for s in (25, 50, 100, 200)]
    assert all(b < 0.85 * a for a, b in zip(by_steps, by_steps[1:], strict=False)), by_steps
    plain = [inpaint_error(s, 5, 1) for s in (50, 200)] + [inpaint_error(None, 5, 1)]
    assert min(plain) > 5 * by_jumps[-1] and min(plain) > 5 * by_steps[-1], (plain, by_jumps, by_steps)
    assert by_steps[-1] < 0.2 and min(plain) > 0.8, (plain, by_steps)


def test_repaint_model_sees_known_pixels_drawn_from_q():
    """Every x_t the network sees (after reverse steps and after jumps) has known pixels distributed as
    q(x_t | x₀) = N(√ᾱ_t x₀, (1 − ᾱ_t) I) (Algorithm 1, line 5): 5 standard errors on N = 4000."""
    d = linear()
    oracle, seen = Oracle(d), []

    def probe(x, t):
        seen.append((int(t[0]), flat(x)[:, KNOWN]))
        return oracle(x, t)

    x0 = torch.zeros(4000, D, dtype=torch.float64)
    x0[:, KNOWN] = X_KNOWN
    mask = images(torch.tensor([1.0, 1.0, 0.0, 0.0]))
    inpaint(probe, d, images(x0), mask, 12, 3, 3, torch.Generator().manual_seed(7), clip_denoised=False)
    assert len(seen) > 12 and len({t for t, _ in seen}) == 12  # the jumps revisit timesteps
    for t, xk in seen:
        a = float(d.schedule.alphas_cumprod[t])
        sd = math.sqrt(1 - a)
        assert ((xk.mean(0) - math.sqrt(a) * X_KNOWN).abs() < 5 * sd / math.sqrt(len(xk))).all(), t
        assert ((xk.var(0) - sd**2).abs() < 5 * sd**2 * math.sqrt(2 / len(xk))).all(), t


def test_jump_schedule_is_repaints():
    """get_schedule_jump of the RePaint repository (n_sample = 1), worked by hand for 7 steps, jumps of 2 × 3."""
    ts = jump_schedule(7, jump_length=2, jump_n_sample=3)
    hand = [6, 5, 4, 5, 6, 5, 4, 5, 6, 5, 4, 3, 2, 3, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, 1, 2, 1, 0, -1]
    assert ts == hand
    assert jump_schedule(5, 10, 10) == [4, 3, 2, 1, 0, -1] == jump_schedule(5, 2, 1)
    assert all(abs(b - a) == 1 for a, b in zip(ts, ts[1:], strict=False))
    with pytest.raises(EditError):
        jump_schedule(5, 0, 3)


def test_inpaint_composes_with_learned_variance_and_guidance_and_checks_its_mask():
    """A learned-range model whose variance channels say v = −1 (Σ = β̃) inpaints exactly like fixed_small; a
    classifier-free-guided callable is just another model; a mask that does not fit is refused."""
    sched = NoiseSchedule.linear(1000)
    fixed, learned = GaussianDiffusion(sched), GaussianDiffusion(sched, variance="learned_range")
    oracle = Oracle(fixed)
    x0 = images(MU.repeat(8, 1))
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(1, 1, 2, 2)

    def run(model, diffusion):
        return inpaint(
            model, diffusion, x0, mask, 20, 5, 3, torch.Generator().manual_seed(2), clip_denoised=False
        )

    ref = run(oracle, fixed)
    assert torch.allclose(run(lambda x, t: torch.cat([oracle(x, t), -torch.ones_like(x)], 1), learned), ref)
    guided = ddpm.sampling.classifier_free_guidance(
        lambda x, t, y: oracle(x, t), torch.zeros(8).long(), 2.0, 1
    )
    assert torch.allclose(run(guided, fixed), ref, atol=1e-6)  # (1 + w)ε − wε = ε
    assert not torch.allclose(
        run(lambda x, t: torch.cat([oracle(x, t), torch.ones_like(x)], 1), learned), ref
    )
    for bad in (torch.ones(1, 1, 3, 3), torch.ones(2, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0)):
        with pytest.raises(EditError):
            inpaint(oracle, fixed, x0, bad, 5)


# --------------------------------------------------------------------------- SDEdit
def sdedit_law(x: torch.Tensor, a: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Law of x₀ ~ p(x₀ | x_t), x_t ~ q(x_t | x) = N(√a x, (1 − a) I): mean μ + aΣV⁻¹(x − μ), covariance
    Σ − K aΣ Kᵀ with K = √a Σ V⁻¹, V = aΣ + (1 − a) I."""
    V = a * SIGMA + (1 - a) * torch.eye(D, dtype=torch.float64)
    K = math.sqrt(a) * SIGMA @ torch.linalg.inv(V)
    return MU + math.sqrt(a) * K @ (x - MU), SIGMA - K @ (a * SIGMA) @ K.T


def flow_map(y: torch.Tensor, a: float) -> torch.Tensor:
    """The probability-flow ODE from ᾱ = a to 0 for N(μ, Σ) data: x₀ = μ + Σ^{1/2} V^{−1/2} (x_t − √a μ) (V and Σ
    commute, so the transport between their Gaussians is this symmetric linear map); y: [N, D]."""
    V = a * SIGMA + (1 - a) * torch.eye(D, dtype=torch.float64)
    A = _sym_fn(SIGMA, torch.sqrt) @ _sym_fn(V, lambda s: s**-0.5)
    return MU + (y - math.sqrt(a) * MU) @ A.T


def test_sdedit_ancestral_draws_from_the_exact_law():
    """Strength 0 is the identity; at 0.25 ancestral SDEdit from a fixed x has the exact law above (N = 10,000:
    5 standard errors plus the ancestral sampler's own ~2 % variance bias); at strength 1 it draws from the data
    distribution whatever x was (two inputs far apart)."""
    d = linear()
    x = torch.tensor([1.5, -1.0, 0.8, 1.2], dtype=torch.float64)
    xs = images(x.repeat(8, 1))
    assert torch.equal(sdedit(Oracle(d), d, xs, 0.0), xs)
    n = 10_000
    for strength, inputs in ((0.25, [x]), (1.0, [x, -2 * x])):
        t0 = strength_timestep(strength, d.num_timesteps)
        a = float(d.schedule.alphas_cumprod[t0])
        for xin in inputs:
            out = flat(sdedit(Oracle(d), d, images(xin.repeat(n, 1)), strength, "ddpm",
                              generator=torch.Generator().manual_seed(3), clip_denoised=False))  # fmt: skip
            m_ref, C_ref = sdedit_law(xin, a) if strength < 1 else (MU, SIGMA)
            sd = C_ref.diagonal().sqrt()
            assert ((out.mean(0) - m_ref).abs() < 5 * sd / math.sqrt(n) + 0.01 * sd).all(), (
                strength,
                out.mean(0),
            )
            err = (torch.cov(out.T) - C_ref).abs() / (sd[:, None] * sd[None])
            assert err.max() < 5 * math.sqrt(2 / n) + 0.03, (strength, err)
    m_quarter, _ = sdedit_law(x, float(d.schedule.alphas_cumprod[249]))
    assert (m_quarter - MU).abs().max() > 0.2  # far from the data (tolerance above: 0.03): the check can fail


# method: (steps, the error's shrink factor when they double, the error at twice the steps); the floor (~5e-4) is
# the samplers' stop at t = 0 (ᾱ_0 = 1 − β_1), as in test_sampling.py
ODE_SDEDIT = {
    "ddim": (20, 1.8, 0.06),
    "dpmpp_2m": (10, 2.5, 5e-3),
    "unipc": (10, 3.0, 1e-3),
    "heun": (10, 3.0, 0.015),
}


@pytest.mark.parametrize("method", list(ODE_SDEDIT))
def test_sdedit_with_an_ode_sampler_is_the_flow_map(method):
    """With a deterministic sampler SDEdit is x ↦ Φ(√ᾱ x + √(1−ᾱ) ε), Φ the probability-flow map from t₀ (closed
    form above): checked sample by sample; the error falls at the sampler's order on the truncated, respaced chain."""
    steps, shrink, tol = ODE_SDEDIT[method]
    d = linear()
    g = torch.Generator().manual_seed(4)
    x = images(torch.randn(16, D, generator=g, dtype=torch.float64))
    eps = torch.randn(x.shape, generator=g)
    a = float(d.schedule.alphas_cumprod[strength_timestep(0.6, 1000)])
    ref = flow_map(math.sqrt(a) * flat(x) + math.sqrt(1 - a) * flat(eps), a)
    err = []
    for s in (steps, 2 * steps):
        out = sdedit(Oracle(d), d, x, 0.6, method, steps=s, noise=eps, clip_denoised=False)
        err.append((flat(out) - ref).abs().max().item())
    assert err[1] * shrink < err[0] and err[1] < tol, err


def test_sdedit_refuses_bad_strength():
    d = linear()
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(EditError, match="strength"):
            sdedit(Oracle(d), d, images(MU[None]), bad)


# --------------------------------------------------------------------------- inversion and interpolation
def test_inversion_reconstructs_with_an_error_that_shrinks_with_steps():
    """invert → DDIM sample returns x₀ with an error that falls like 1/steps (two Euler solutions of the same
    ODE); x_T itself converges to the exact inverse flow map x_T = √ᾱ_T μ + V_T^{1/2} Σ^{−1/2} (x₀ − μ)."""
    d = linear()
    oracle = Oracle(d)
    x0 = images(
        MU + torch.randn(32, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64) @ _L.T / 2
    )
    a_T = float(d.schedule.alphas_cumprod[-1])
    V = a_T * SIGMA + (1 - a_T) * torch.eye(D, dtype=torch.float64)
    exact_T = (
        math.sqrt(a_T) * MU + (flat(x0) - MU) @ (_sym_fn(V, torch.sqrt) @ _sym_fn(SIGMA, lambda s: s**-0.5)).T
    )
    rec_err, inv_err = [], []
    for steps in (10, 20, 50, 100, 200, 1000):
        x_T = invert(oracle, d, x0, steps, clip_denoised=False)
        rec = ddpm.sample(oracle, d, None, "ddim", steps=steps, noise=x_T, clip_denoised=False)
        rec_err.append((flat(rec) - flat(x0)).abs().max().item())
        inv_err.append((flat(x_T) - exact_T).abs().max().item())
    assert all(b < a / 1.6 for a, b in zip(rec_err, rec_err[1:], strict=False)), rec_err
    assert all(b < a for a, b in zip(inv_err, inv_err[1:], strict=False)), inv_err
    assert rec_err[-1] < 0.01 and inv_err[-1] < 0.03, (rec_err, inv_err)


def test_slerp():
    e1, e2 = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    assert torch.allclose(slerp(e1, e2, 0.5), torch.tensor([[1.0, 2.0, 0.0]]) / math.sqrt(2), atol=1e-6)
    assert torch.allclose(slerp(e1, e2, 0.0), e1) and torch.allclose(slerp(e1, e2, 1.0), e2)
    assert torch.allclose(slerp(e1, 3 * e1, 0.5), 2 * e1)  # parallel: linear
    z = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    z = z / z.norm(dim=1, keepdim=True)
    for a in (0.25, 0.5, 0.9):  # unit vectors stay on the sphere, with angles split as α : 1 − α
        s = slerp(z[:1], z[1:], a)
        theta = torch.arccos((z[0] * z[1]).sum())
        assert abs(s.norm() - 1) < 1e-5 and abs(torch.arccos((s[0] * z[0]).sum()) - a * theta) < 1e-4


def test_interpolation_ends_reconstruct_and_middle_is_decoded_slerp():
    d = linear()
    oracle = Oracle(d)
    g = torch.Generator().manual_seed(6)
    xa, xb = (images(MU + torch.randn(2, D, generator=g, dtype=torch.float64) @ _L.T / 2) for _ in range(2))
    out = interpolate(oracle, d, xa, xb, 5, 200, clip_denoised=False)
    assert out.shape == (5, 2, 1, 2, 2)
    # the ends are round trips at 200 steps (error ~0.02, test_inversion_reconstructs…)
    assert (out[0] - xa).abs().max() < 0.04 and (out[-1] - xb).abs().max() < 0.04
    z = invert(oracle, d, torch.cat([xa, xb]), 200, clip_denoised=False)
    mid = ddpm.sample(oracle, d, None, "ddim", steps=200, noise=slerp(z[:2], z[2:], 0.5), clip_denoised=False)
    assert torch.allclose(out[2], mid, atol=1e-5)
    single = interpolate(oracle, d, xa[0], xb[0], 3, 20, clip_denoised=False)
    assert single.shape == (3, 1, 2, 2)
    with pytest.raises(EditError):
        interpolate(oracle, d, xa, xb, 1, 10)
    with pytest.raises(EditError):
        interpolate(oracle, d, xa, xb[:1], 3, 10)


# --------------------------------------------------------------------------- command line (a tiny trained run)
def _png(path, arr):
    from PIL import Image

    Image.fromarray(arr).save(path)
    return str(path)


@pytest.fixture
def digits(tmp_path):
    """Two 16×16 grayscale PNGs (the tiny run's image shape) and their pixels."""
    g = np.random.default_rng(0)
    arrs = [g.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(2)]
    return [_png(tmp_path / f"in{i}.png", a) for i, a in enumerate(arrs)], arrs


def test_cli_inpaint_keeps_the_known_pixels_and_writes_the_grid(tiny_run, digits, tmp_path, capsys):
    from PIL import Image

    files, arrs = digits
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, :5] = 255  # known: the five left columns
    out, npz = tmp_path / "grid.png", tmp_path / "out.npz"
    code, _, err = run_cli(
        capsys, "edit", "inpaint", "--run", str(tiny_run), "--input", *files, "--mask", _png(tmp_path / "m.png", mask),
        "--steps", "6", "--jump-length", "2", "--jump-n-sample", "2", "--samples", "2", "--out", str(out),
        "--npz", str(npz), "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    x = np.load(npz)["x"]
    assert x.shape == (4, 16, 16, 1)
    for i in range(4):
        assert np.array_equal(
            x[i, :, :5, 0], arrs[i // 2][:, :5]
        )  # known pixels exactly, unknown ones generated
    assert not np.array_equal(x[0, :, 5:, 0], arrs[0][:, 5:])
    with Image.open(out) as im:
        assert im.size == (4 * 18 + 2, 2 * 18 + 2)  # input, mask, 2 samples; a row per input


def test_cli_sdedit_invert_interpolate(tiny_run, digits, tmp_path, capsys):
    files, arrs = digits
    batch = tmp_path / "batch.npz"
    np.savez(batch, x=np.stack(arrs)[..., None])
    code, _, err = run_cli(
        capsys, "edit", "sdedit", "--run", str(tiny_run), "--input", str(batch), "--strength", "0", "0.5",
        "--method", "ddim", "--steps", "3", "--out", str(tmp_path / "sd.png"), "--npz", str(tmp_path / "sd.npz"),
    )  # fmt: skip
    assert code == 0, err
    x = np.load(tmp_path / "sd.npz")["x"]
    assert x.shape == (4, 16, 16, 1) and np.array_equal(x[:2, ..., 0], np.stack(arrs))  # strength 0: identity
    code, out, err = run_cli(
        capsys, "edit", "invert", "--run", str(tiny_run), "--input", *files, "--steps", "5",
        "--out", str(tmp_path / "inv.png"), "--npz", str(tmp_path / "inv.npz"), "--no-progress",
    )  # fmt: skip
    assert code == 0 and "reconstruction" in out, err
    f = np.load(tmp_path / "inv.npz")
    assert (
        f["noise"].shape == (2, 1, 16, 16)
        and f["noise"].dtype == np.float32
        and f["x"].shape == (2, 16, 16, 1)
    )
    code, _, err = run_cli(
        capsys, "edit", "interpolate", "--run", str(tiny_run), "--data-images", "0,1", "--steps", "4",
        "--frames", "4", "--out", str(tmp_path / "int.png"), "--npz", str(tmp_path / "int.npz"),
    )  # fmt: skip
    assert code == 0, err
    assert np.load(tmp_path / "int.npz")["x"].shape == (4, 16, 16, 1)


@pytest.mark.parametrize(
    "case",
    ["mask-size", "strength-high", "strength-negative", "rgb", "image-size", "npz-without-x", "not-an-image",
     "missing", "three-to-interpolate", "mask-preset", "class-unconditional", "no-input"],
)  # fmt: skip
def test_cli_bad_input_is_one_line(case, tiny_run, digits, tmp_path, capsys):
    files, _ = digits
    run = ["--run", str(tiny_run)]
    inp = ["edit", "inpaint", *run, "--input", files[0], "--steps", "2", "--no-progress"]
    argv = {
        "mask-size": [*inp, "--mask", _png(tmp_path / "m.png", np.zeros((8, 8), dtype=np.uint8))],
        "strength-high": ["edit", "sdedit", *run, "--input", files[0], "--strength", "1.5"],
        "strength-negative": ["edit", "sdedit", *run, "--input", files[0], "--strength", "0.5", "-0.1"],
        "rgb": ["edit", "invert", *run, "--input", _png(tmp_path / "c.png", np.zeros((16, 16, 3), np.uint8))],
        "image-size": [
            "edit",
            "invert",
            *run,
            "--input",
            _png(tmp_path / "s.png", np.zeros((20, 20), np.uint8)),
        ],
        "npz-without-x": ["edit", "invert", *run, "--input", str(_npz(tmp_path / "b.npz", y=np.zeros(3)))],
        "not-an-image": ["edit", "invert", *run, "--input", str(_text(tmp_path / "t.png"))],
        "missing": ["edit", "invert", *run, "--input", str(tmp_path / "nope.png")],
        "three-to-interpolate": ["edit", "interpolate", *run, "--input", *files, files[0], "--steps", "2"],
        "mask-preset": [*inp, "--mask", "random:1.5"],
        "class-unconditional": [*inp, "--mask", "center", "--class", "1"],
        "no-input": ["edit", "invert", *run],
    }[case]
    says = {
        "mask-size": "8×8", "strength-high": "strength", "strength-negative": "strength", "rgb": "3 channel",
        "image-size": "20×20", "npz-without-x": "'x'", "not-an-image": "not a readable image", "missing": "nope.png",
        "three-to-interpolate": "two images", "mask-preset": "random:1.5", "class-unconditional": "class-conditional",
        "no-input": "--input",
    }[case]  # fmt: skip
    code, _, err = run_cli(capsys, *argv)
    assert code != 0
    assert err.startswith("ddpm: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    assert says in err and "internal error" not in err, err


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _text(path):
    path.write_text("not a picture")
    return path
