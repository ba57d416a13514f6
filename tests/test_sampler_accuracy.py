"""The Gaussian-mixture oracle of benchmarks/sampler_accuracy.py, and a quick version of its sampler comparison."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "sampler_accuracy.py"
_spec = importlib.util.spec_from_file_location("sampler_accuracy", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("sampler_accuracy", bench)  # dataclasses look their module up there
_spec.loader.exec_module(bench)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest)


def test_oracle_eps_is_the_tweedie_score():
    """ε*(y, σ̃) = −σ̃ ∇_y log p_σ̃(y) for the mixture smoothed by N(0, σ̃² I) (checked by autograd)."""
    gmm = bench.GaussianMixture.default(dim=3, seed=5)
    y = torch.randn(16, 3, dtype=torch.float64, requires_grad=True)
    for sig in (0.05, 0.7, 20.0):
        var = gmm.s2[None] + sig**2
        z = torch.einsum("kji,nkj->nki", gmm.U, y[:, None, :] - gmm.mu[None])
        log_p = torch.logsumexp(torch.log(gmm.w)[None] - 0.5 * (torch.log(var) + z**2 / var).sum(-1), dim=1)
        (grad,) = torch.autograd.grad(log_p.sum(), y)
        eps = gmm.eps(y.detach(), torch.full((16,), sig, dtype=torch.float64))
        assert torch.allclose(eps, -sig * grad, atol=1e-10)


def test_oracle_samples_and_reference_solution():
    gmm = bench.GaussianMixture.default(dim=2, seed=0)
    g = torch.Generator().manual_seed(0)
    x = gmm.sample(20_000, g)
    frac = torch.bincount(gmm.assign(x), minlength=6).double() / len(x)
    assert (frac - gmm.w).abs().max() < 0.02
    # The exact flow from x_T ~ N(0, I) lands on data: same mode weights, and RK4 has converged.
    x_T = torch.randn(2000, 2, 1, 1, generator=g)
    ref = bench.reference_ode(gmm, x_T, 157.4, steps=200)
    assert bench.ode_error(bench.reference_ode(gmm, x_T, 157.4, steps=100), ref) < 1e-5
    assert bench.mode_error(gmm, ref) < 0.06  # sampling noise of the TV with 2000 points: ~0.02
    mmd = bench.MMD(gmm.sample(2000, g))
    assert abs(mmd(ref)) < 3e-3 and mmd(ref * 0.8) > 10 * abs(mmd(ref))


def test_best_sampler_beats_ddim_and_diffusers_on_the_mixture():
    """A quick run of the benchmark (N = 1000): at 20 evaluations UniPC's distance to the exact ODE solution is
    below DDIM's at 20 (in fact below DDIM's at 100), and at 10 it is at most ¼ of diffusers' DPMSolverMultistep
    default (DESIGN.md's target). The full benchmark measures ratios of 0.1 and 0.09 for these two."""
    pytest.importorskip("diffusers")  # only this comparison needs it; the oracle tests above do not
    res = bench.run_benchmark(
        n=1000,
        nfes=(10, 20, 100),
        only=("ddim", "unipc", "D:DPMSolverMS"),
        ref_steps=200,
        log=lambda s: None,
    )
    ode = {name: {k: v["ode"] for k, v in r.items()} for name, r in res["rows"].items()}
    assert all(math.isfinite(v) for r in ode.values() for v in r.values())
    assert ode["unipc"][20] < ode["ddim"][20] and ode["unipc"][20] < ode["ddim"][100], ode
    assert ode["unipc"][10] <= 0.25 * ode["D:DPMSolverMS"][10], ode
    assert ode["unipc"][100] < ode["unipc"][20] < ode["unipc"][10], ode
