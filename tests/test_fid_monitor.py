"""FID during training (train.fid_every): the logged FID is the FID of the saved best-FID weights' samples against
the same reference, computed independently; the best survives a resume; the reference is cached; bad values are
refused; an evaluation that dwarfs the training between two is reported once."""

import json
import math

import pytest

from ddpm.checkpoint import load_checkpoint
from ddpm.cli import main
from ddpm.config import ConfigError, apply_overrides, get_preset
from ddpm.metrics.fid import compute_stats, frechet_distance_low_rank
from ddpm.metrics.inception import InceptionFeatures
from ddpm.metrics.refstats import reference_stats
from ddpm.pipeline import generate, load_model
from ddpm.train import Trainer
from ddpm.train.fid_monitor import BEST_FID_DIR

pytestmark = pytest.mark.usefixtures("one_thread_module")

FID = [
    "train.fid_every=2",
    "train.fid_n=6",
    "train.fid_ref_n=24",
    "train.threads=1",
    "train.checkpoint_every=none",
]


def tiny(*extra: str, steps: int = 4):
    return apply_overrides(get_preset("tiny"), [f"train.max_steps={steps}", "data.limit=64", *FID, *extra])


def fid_records(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"fid"' in ln]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_logged_fid_is_the_best_weights_fid_recomputed(tmp_path, cache):
    run = tmp_path / "run"
    logs: list[str] = []
    summary = Trainer(tiny(), run, progress=False, log=logs.append).fit()
    recs = fid_records(run)
    assert [r["step"] for r in recs] == [2, 4]
    assert all(r["fid_n"] == 6 and r["fid_s"] > 0 and math.isfinite(r["fid"]) for r in recs)
    assert "fid_ref_s" in recs[0] and "fid_ref_s" not in recs[1]  # the reference is computed once
    best = min(recs, key=lambda r: r["fid"])
    assert recs[-1]["best_fid"] == best["fid"] and recs[-1]["best_fid_step"] == best["step"]
    assert summary["best_fid"] == best["fid"] and summary["best_fid_step"] == best["step"]
    # checkpoints/best-fid holds that step's weights: its EMA network, sampled as the monitor samples (seed = step)
    # and scored against the training data's statistics (from the cache), gives the logged figure.
    ck = run / "checkpoints" / BEST_FID_DIR
    assert load_checkpoint(ck, with_state=False).step == best["step"]
    lm = load_model(ck, device="cpu")
    images = generate(lm, 6, seed=best["step"], precision="fp32", threads=None)
    ext = InceptionFeatures(device="cpu", threads=None)
    ref = reference_stats("blobs", split="train", image_size=16, n=24, extractor=ext)
    assert ref.n == 24 and len(list(cache.rglob("*.npz"))) == 1
    fake = compute_stats(images, ext, keep_features=True).features
    assert frechet_distance_low_rank(fake, ref.mu, ref.sigma) == pytest.approx(best["fid"], rel=1e-6)
    # The training between evaluations is milliseconds against seconds of FID: said once, with what to change.
    warned = [m for m in logs if m.startswith("warning: FID during training took")]
    assert len(warned) == 1 and "train.fid_every" in warned[0]
    # the best-FID directory is a checkpoint `ddpm sample --ckpt` reads
    assert main(["sample", "--ckpt", str(ck), "--n", "2", "--out", str(tmp_path / "s.npz")]) == 0


def test_the_best_fid_survives_a_resume(tmp_path, cache):
    run = tmp_path / "run"
    cfg = tiny("train.checkpoint_every=2")
    Trainer(cfg, run, progress=False, log=lambda s: None).fit()
    first = fid_records(run)
    cfg = apply_overrides(cfg, ["train.max_steps=8"])
    Trainer(cfg, run, resume=True, progress=False, log=lambda s: None).fit()
    recs = fid_records(run)
    assert [r["step"] for r in recs] == [2, 4, 6, 8] and recs[:2] == first
    for i, r in enumerate(recs):  # the running best over the whole run, across the resume
        best = min(recs[: i + 1], key=lambda q: q["fid"])
        assert (r["best_fid"], r["best_fid_step"]) == (best["fid"], best["step"])
    assert "fid_ref_s" in recs[2]  # the resumed trainer reads the statistics back from the cache …
    assert len(list(cache.rglob("*.npz"))) == 1  # … which still holds one file
    step = load_checkpoint(run / "checkpoints" / BEST_FID_DIR, with_state=False).step
    assert step == recs[-1]["best_fid_step"]


def test_an_explicit_reference_and_off_by_default(tmp_path, cache):
    assert get_preset("mnist-cpu").train.fid_every is None
    ref = tmp_path / "ref.npz"
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(ref, x=rng.integers(0, 256, (12, 16, 16, 1), dtype=np.uint8))
    run = tmp_path / "run"
    Trainer(tiny(f"train.fid_ref={ref}", steps=2), run, progress=False, log=lambda s: None).fit()
    (rec,) = fid_records(run)
    ext = InceptionFeatures(device="cpu", threads=None)
    images = generate(
        load_model(run / "checkpoints" / BEST_FID_DIR, device="cpu"), 6, seed=2, precision="fp32"
    )
    ref_stats = reference_stats(ref, n=24, extractor=ext)
    want = frechet_distance_low_rank(
        compute_stats(images, ext, keep_features=True).features, ref_stats.mu, ref_stats.sigma
    )
    assert rec["fid"] == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("setting", ["train.fid_every=0", "train.fid_n=1", "train.fid_ref_n=1"])
def test_bad_fid_settings_are_refused(setting, tmp_path):
    with pytest.raises(ConfigError, match=setting.split("=")[0]):
        Trainer(tiny(setting), tmp_path / "run", progress=False, log=lambda s: None)
