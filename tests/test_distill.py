"""Few-step distillation against exact answers: Gaussian data with its exact ε-predictor as the teacher, whose
deterministic DDIM map is affine in x_T, so that an affine student can reproduce it exactly; and end to end, a
`tiny` run distilled, resumed and sampled through the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from conftest import run_cli
from ddpm import GaussianDiffusion, NoiseSchedule
from ddpm.distill import ConsistencyDistillation, ProgressiveDistillation, ddim_step, teacher_points
from ddpm.sampling import sample, timestep_grid

pytestmark = pytest.mark.usefixtures("one_thread")

T, D = 1000, 3
MU = torch.tensor([0.5, -0.3, 0.1], dtype=torch.float64)
S = torch.tensor([0.4, 0.8, 0.2], dtype=torch.float64)  # data x₀ ~ N(MU, diag S²), as [N, D, 1, 1]


def _diffusions() -> tuple[GaussianDiffusion, GaussianDiffusion]:
    sched = NoiseSchedule.linear(T)
    return GaussianDiffusion(sched, prediction="eps"), GaussianDiffusion(sched, prediction="v")


def _as(v: Tensor, x: Tensor) -> Tensor:
    return v.to(x.device).reshape(1, -1, 1, 1)


def exact_eps(diffusion: GaussianDiffusion) -> object:
    """E[ε | x_t] for x₀ ~ N(μ, diag s²): σ_t (x_t − α_t μ)/(α_t² s² + σ_t²) — affine in x_t."""
    abar = diffusion.schedule.alphas_cumprod

    def model(x: Tensor, t: Tensor) -> Tensor:
        a = abar.to(x.device)[t].reshape(-1, 1, 1, 1)
        var = a * _as(S, x) ** 2 + (1 - a)
        return ((1 - a).sqrt() * (x - a.sqrt() * _as(MU, x)) / var).to(x.dtype)

    return model


class AffineV(nn.Module):
    """A per-timestep affine network: v̂ = a_t ⊙ x + b_t (a, b: [T, D])."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(T, D, dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros(T, D, dtype=torch.float64))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return (self.a[t][..., None, None] * x.double() + self.b[t][..., None, None]).to(x.dtype)


def _data(n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    x0 = MU.reshape(1, D, 1, 1) + S.reshape(1, D, 1, 1) * torch.randn(
        n, D, 1, 1, generator=g, dtype=torch.float64
    )
    return x0, torch.randn(n, D, 1, 1, generator=g, dtype=torch.float64)


def _ddim(model: object, diffusion: GaussianDiffusion, x_T: Tensor, steps: int) -> Tensor:
    return sample(model, diffusion, None, "ddim", steps, noise=x_T, clip_denoised=False, spacing="trailing")


def test_teacher_ddim_map_is_affine_in_x_T():
    eps_d, _ = _diffusions()
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(2, 64, D, 1, 1, generator=g)
    for steps in (1, 2, 8):
        f = lambda x, n=steps: _ddim(exact_eps(eps_d), eps_d, x, n).double()  # noqa: E731
        for lam in (0.3, 2.5):
            mixed = f(lam * x1 + (1 - lam) * x2)
            # float32 sampling: x̂₀ = (x − σ ε̂)/α amplifies roundoff by 1/α_{T−1} ≈ 160 at one step
            assert torch.allclose(mixed, lam * f(x1) + (1 - lam) * f(x2), atol=5e-4), steps
    # and not trivially so: the 8-step map moves x_T towards the data (mean near μ)
    assert (f(torch.randn(4000, D, 1, 1, generator=g)).mean(0).flatten() - MU).abs().max() < 0.05


def test_grids_nest_and_match_the_sampler():
    for steps in (1, 2, 4, 8, 16):
        t, t1, t2 = teacher_points(T, steps)
        q = timestep_grid(T, 2 * steps, "trailing")  # the teacher's DDIM grid
        assert t.tolist() == timestep_grid(T, steps, "trailing") == q[1::2]
        assert t1.tolist() == q[0::2] and t2.tolist() == [-1, *q[1::2][:-1]]


def _hand_two_steps(pred_x0, diffusion: GaussianDiffusion, z: Tensor, ts: list[int]) -> Tensor:
    """Two DDIM steps by hand: x' = √ᾱ' x̂₀ + √(1 − ᾱ') ε̂ with ε̂ = (x − √ᾱ x̂₀)/√(1 − ᾱ); ᾱ = 1 at t = −1."""
    abar = lambda t: 1.0 if t < 0 else float(diffusion.schedule.alphas_cumprod[t])  # noqa: E731
    x = z
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        x0 = pred_x0(x, t)
        eps = (x - abar(t) ** 0.5 * x0) / (1 - abar(t)) ** 0.5
        x = abar(t_next) ** 0.5 * x0 + (1 - abar(t_next)) ** 0.5 * eps
    return x


def test_each_rounds_target_is_two_teacher_ddim_steps():
    """x̃ makes one student DDIM step land where two teacher steps land, checked against a hand computation for
    every grid point of every round (the teacher of later rounds: an arbitrary affine v-network), and against
    the library's DDIM sampler's own trajectory from x_T."""
    eps_d, v_d = _diffusions()
    g = torch.Generator().manual_seed(1)
    oracle = exact_eps(eps_d)
    pd = ProgressiveDistillation(oracle, eps_d, v_d, steps=4, clip=False)
    for rnd in range(3):
        d, teacher = pd.teacher_diffusion, pd.teacher
        for j in range(pd.steps):
            t, t1, t2 = (int(v[j]) for v in (pd.t, pd.t1, pd.t2))
            z = torch.randn(16, D, 1, 1, generator=g, dtype=torch.float64)
            idx = torch.full((16,), j, dtype=torch.long)

            def pred_x0(x: Tensor, tt: int, d=d, teacher=teacher) -> Tensor:
                tv = torch.full((x.shape[0],), tt, dtype=torch.long)
                return d.model_predictions(teacher(x, tv), x, tv, clip_denoised=False)[0]

            z2 = _hand_two_steps(pred_x0, d, z, [t, t1, t2])
            x_tilde = pd.target(z, idx)
            a, a2 = (
                float(d.schedule.alphas_cumprod[t]),
                1.0 if t2 < 0 else float(d.schedule.alphas_cumprod[t2]),
            )
            one_step = a2**0.5 * x_tilde + (1 - a2) ** 0.5 * (z - a**0.5 * x_tilde) / (1 - a) ** 0.5
            assert torch.allclose(one_step, z2, atol=1e-9, rtol=1e-9), (rnd, j)
        if rnd == 0:  # the sampler's trajectory: from x_T, two steps of the 8-step DDIM reach q_5
            x_T = torch.randn(16, D, 1, 1, generator=g)
            q = timestep_grid(T, 8, "trailing")
            _, frames = sample(
                oracle, eps_d, None, "ddim", 8, noise=x_T, clip_denoised=False, spacing="trailing",
                intermediates=[q[5]],
            )  # fmt: skip
            x_tilde = pd.target(x_T.double(), torch.full((16,), 3, dtype=torch.long))
            a, a2 = float(eps_d.schedule.alphas_cumprod[q[7]]), float(eps_d.schedule.alphas_cumprod[q[5]])
            one_step = a2**0.5 * x_tilde + (1 - a2) ** 0.5 * (x_T - a**0.5 * x_tilde) / (1 - a) ** 0.5
            assert torch.allclose(one_step.float(), frames[q[5]], atol=1e-4)
        nxt = AffineV()
        with torch.no_grad():
            nxt.a.normal_(0, 0.3, generator=g)
            nxt.b.normal_(0, 0.3, generator=g)
        if pd.steps > 1:
            pd.next_round(nxt)


def test_loss_weighting_is_truncated_snr_or_snr_plus_one():
    """w = max(SNR, 1) (Salimans & Ho's truncated SNR) or SNR + 1 (the v-loss: ‖v − v̂‖² = (1 + SNR)‖x − x̂‖²)."""
    eps_d, v_d = _diffusions()
    g = torch.Generator().manual_seed(4)
    x0, noise = _data(8, g)
    j = torch.arange(4).repeat(2)
    student = AffineV()
    with torch.no_grad():
        student.a.normal_(0, 0.5, generator=g)
    for weighting in ("snr_trunc", "snr+1"):
        pd = ProgressiveDistillation(exact_eps(eps_d), eps_d, v_d, steps=4, weighting=weighting, clip=False)
        t = pd.t[j]
        abar = v_d.schedule.alphas_cumprod[t]
        snr = abar / (1 - abar)
        w = snr.clamp(min=1) if weighting == "snr_trunc" else snr + 1
        z = v_d.q_sample(x0, t, noise)
        x_hat = abar.sqrt().reshape(-1, 1, 1, 1) * z - (1 - abar).sqrt().reshape(-1, 1, 1, 1) * student(z, t)
        want = w * ((x_hat - pd.target(z, j)) ** 2).mean(dim=(1, 2, 3))
        assert torch.allclose(pd.losses(student, x0, noise, j), want, rtol=1e-10)
        if weighting == "snr+1":  # the v-loss
            v_tilde = (abar.sqrt().reshape(-1, 1, 1, 1) * z - pd.target(z, j)) / (1 - abar).sqrt().reshape(
                -1, 1, 1, 1
            )
            v_loss = ((student(z, t) - v_tilde) ** 2).mean(dim=(1, 2, 3))
            assert torch.allclose(pd.losses(student, x0, noise, j), v_loss, rtol=1e-8)


def _fit(pd: ProgressiveDistillation, student: AffineV, g: torch.Generator) -> float:
    """One round of Algorithm 2 on a fixed batch, minimised exactly (an affine target is exactly representable)."""
    x0, noise = _data(256 * pd.steps, g)
    j = torch.arange(pd.steps).repeat_interleave(256)
    opt = torch.optim.LBFGS(
        student.parameters(), lr=1, max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> Tensor:
        opt.zero_grad()
        loss = pd.losses(student, x0, noise, j).mean()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    return float(pd.losses(student, x0, noise, j).mean().detach())


def test_affine_student_distilled_progressively_reproduces_the_teacher_in_one_step():
    """8 → 4 → 2 → 1 steps: the 1-step student's map equals the teacher's 8-step DDIM map."""
    eps_d, v_d = _diffusions()
    g = torch.Generator().manual_seed(2)
    teacher = exact_eps(eps_d)
    pd = ProgressiveDistillation(teacher, eps_d, v_d, steps=4, clip=False)
    student = AffineV()
    for _ in range(3):
        assert _fit(pd, student, g) < 1e-12
        if pd.steps > 1:
            pd.next_round(student)
    assert pd.steps == 1
    x_T = torch.randn(512, D, 1, 1, generator=g)
    one = _ddim(student, v_d, x_T, 1).double()
    eight = _ddim(teacher, eps_d, x_T, 8).double()
    assert (one - eight).abs().max() < 1e-4
    # distilling 2 → 1 alone is not enough: the 1-step student is far from the teacher's own 1-step map
    assert (_ddim(teacher, eps_d, x_T, 1).double() - eight).abs().max() > 0.05


def test_consistency_loss_vanishes_at_the_teachers_consistency_function():
    """f*(z, t_k) = the teacher's DDIM chain t_k → … → t_0, then x̂₀: the exact consistency function of the
    discretised teacher ODE. As student and target network it makes the CD loss 0; perturbed, the loss is not."""
    eps_d, v_d = _diffusions()
    teacher = exact_eps(eps_d)
    cd = ConsistencyDistillation(teacher, eps_d, v_d, target=None, points=6, spacing="karras", clip=False)  # type: ignore[arg-type]
    grid = cd.grid.tolist()

    def f_star(z: Tensor, t: Tensor, bump: float = 0.0) -> Tensor:
        x = z.double()
        k = grid.index(int(t[0]))
        for hi, lo in zip(grid[k:0:-1], grid[k - 1 :: -1], strict=False):
            th, tl = torch.full_like(t, hi), torch.full_like(t, lo)
            x = ddim_step(eps_d, eps_d.model_predictions(teacher(x, th), x, th, False)[0], x, th, tl)
        t0 = torch.full_like(t, grid[0])
        x0 = eps_d.model_predictions(teacher(x, t0), x, t0, False)[0] + bump * (k % 2)
        a = v_d.schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1).to(z.dtype)
        return (a.sqrt() * z - x0.to(z.dtype)) / (1 - a).sqrt()  # the v whose x̂₀ is f*

    def per_point(fn):
        def model(z: Tensor, t: Tensor) -> Tensor:
            return torch.cat([fn(z[i : i + 1], t[i : i + 1]) for i in range(len(t))])

        return model

    g = torch.Generator().manual_seed(3)
    x0, noise = _data(40, g)
    n = torch.arange(len(grid) - 1).repeat(8)
    exact = per_point(f_star)
    cd.target_model = exact
    assert float(cd.losses(exact, x0, noise, n).max()) < 1e-18
    bumped = per_point(lambda z, t: f_star(z, t, bump=0.1))
    cd.target_model = bumped
    assert float(cd.losses(bumped, x0, noise, n).min()) > 1e-3


# --------------------------------------------------------------------------- end to end on a tiny run
def _distill(capsys, teacher: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(
        capsys, "distill", "--run", str(teacher), "--out", str(out), "--no-progress",
        "--set", "train.threads=1", "train.checkpoint_every=1", *extra,
    )  # fmt: skip


def test_tiny_run_distils_and_samples_through_the_cli(tiny_run, tmp_path, capsys):
    out = tmp_path / "student"
    code, stdout, err = _distill(
        capsys, tiny_run, out, "--steps", "2", "--teacher-steps", "8", "--round-steps", "2"
    )
    assert code == 0, err
    assert "ddpm sample --run" in stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["sample"] == {**cfg["sample"], "method": "ddim", "steps": 2, "eta": 0.0, "spacing": "trailing"}
    assert (
        cfg["diffusion"]["prediction"] == "v"
        and cfg["model"] == json.loads((tiny_run / "config.json").read_text())["model"]
    )
    rounds = [
        r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "distill_round" in r
    ]
    assert [(r["step"], r["teacher_steps"], r["student_steps"]) for r in rounds] == [(0, 8, 4), (2, 4, 2)]
    kept = json.loads((out / "rounds" / "4-steps" / "config.json").read_text())  # round 1's student, a run
    assert (
        kept["sample"]["steps"] == 4
        and (out / "rounds" / "4-steps" / "checkpoints" / "step-0000002").is_dir()
    )
    code, stdout, err = run_cli(
        capsys, "sample", "--run", str(out), "--n", "3", "--out", str(tmp_path / "s.npz"), "--no-progress"
    )
    assert code == 0, err
    x = np.load(tmp_path / "s.npz")["x"]
    assert x.shape == (3, 16, 16, 1) and x.dtype == np.uint8


def test_student_starts_from_the_teacher_and_samples_with_its_steps(tiny_run, tmp_path, capsys):
    """Before any step the student is the teacher (θ ← η); sampling the student run evaluates it at the 2 points
    of the trailing grid it was distilled for."""
    from ddpm.distill import distill
    from ddpm.pipeline import generate, load_model

    out = tmp_path / "s0"
    calls = []
    distill(
        tiny_run,
        out,
        2,
        teacher_steps=4,
        max_steps=1,
        overrides=["train.threads=1", "train.lr=0"],
        progress=False,
        log=lambda s: None,
    )
    teacher, student = load_model(tiny_run), load_model(out)
    for k, v in teacher.model.state_dict().items():
        assert torch.equal(v, student.model.state_dict()[k]), k
    inner = student.model.forward
    student.model.forward = lambda x, t, *a, **k: calls.append(int(t[0])) or inner(x, t, *a, **k)  # type: ignore[method-assign]
    generate(student, 2, threads=1)
    assert calls == timestep_grid(100, 2, "trailing")[::-1] == [99, 49]  # the grid it was distilled on


def test_resume_after_a_cut_continues_exactly(tiny_run, tmp_path, capsys):
    """Cut in the second round and resumed: the same weights as an uncut run (fixed threads, CPU)."""
    args = ("--steps", "2", "--teacher-steps", "8", "--round-steps", "2")
    assert _distill(capsys, tiny_run, tmp_path / "a", *args)[0] == 0
    assert _distill(capsys, tiny_run, tmp_path / "b", *args, "--max-steps", "3")[0] == 0
    code, _, err = run_cli(
        capsys, "distill", "--out", str(tmp_path / "b"), "--resume", "--max-steps", "4", "--no-progress"
    )
    assert code == 0, err
    assert "resumed" in err and "at step 3" in err
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "a" / "checkpoints" / "step-0000004" / name))
        b = load_file(str(tmp_path / "b" / "checkpoints" / "step-0000004" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (("--steps", "3", "--teacher-steps", "8", "--max-steps", "1"), "power of two"),
        (("--steps", "4", "--teacher-steps", "64"), "give a budget"),
        (("--steps", "0", "--max-steps", "1"), "positive integer"),
        (("--method", "nope", "--steps", "2", "--max-steps", "1"), "invalid choice"),
        (("--steps", "2", "--max-steps", "1", "--set", "model.base_channels=16"), "teacher's network"),
    ],
)
def test_bad_input_is_one_line(tiny_run, tmp_path, capsys, argv, needle):
    code, stdout, err = _distill(capsys, tiny_run, tmp_path / "x", *argv)
    assert code != 0 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("ddpm: error:") and needle in err, err


def test_bad_teacher_or_resume_is_one_line(tiny_run, tmp_path, capsys):
    for argv in (
        (
            "distill",
            "--run",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "x"),
            "--steps",
            "2",
            "--max-steps",
            "1",
        ),
        ("distill", "--out", str(tmp_path / "x"), "--resume"),
        ("distill", "--out", str(tmp_path / "y"), "--steps", "2", "--max-steps", "1"),
    ):
        code, stdout, err = run_cli(capsys, *argv)
        assert code != 0 and len(err.strip().splitlines()) == 1 and err.startswith("ddpm: error:"), err
    # a training run is not a distillation run: --resume on (a copy of) it says so and leaves it as it was
    copy = tmp_path / "teacher"
    shutil.copytree(tiny_run, copy)
    code, _, err = run_cli(capsys, "distill", "--out", str(copy), "--resume", "--no-progress")
    assert code != 0 and "not a distillation run" in err
