"""Tests for ddpm.metrics.classifier: shapes, a quick real training run, report maths, files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from ddpm import data as D
from ddpm.metrics import classifier as C

# ------------------------------------------------------------------------------------------ helpers


class FixedLogits(nn.Module):
    """A fake classifier: image i (every pixel = i, uint8) gets the logits ``table[i]``, whatever the batching."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table.double())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = D.to_uint8(x[:, 0, 0, 0]).long()
        return self.table[idx]


def index_images(n: int, channels: int = 1, size: int = 8) -> torch.Tensor:
    """uint8 [n, C, S, S] where image i is filled with the value i."""
    return torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, channels, size, size).clone()


def one_hot_logits(classes: list[int], k: int, margin: float) -> torch.Tensor:
    """Logits [len(classes), k]: ``margin`` for the given class, 0 elsewhere."""
    t = torch.zeros(len(classes), k, dtype=torch.float64)
    t[torch.arange(len(classes)), torch.tensor(classes)] = margin
    return t


@pytest.fixture(scope="module")
def blobs() -> tuple[D.ImageData, D.ImageData]:
    return (
        D.load("gaussian-blobs", image_size=16, n=1600),
        D.load("gaussian-blobs", image_size=16, split="test", n=500),
    )


@pytest.fixture(scope="module")
def trained(blobs: tuple[D.ImageData, D.ImageData]) -> tuple[C.Classifier, dict]:
    train, val = blobs
    config = C.ClassifierConfig(in_channels=1, widths=(16, 32, 64), preset="mnist")
    return C.train_classifier(train, val, config, epochs=3, batch_size=64, seed=0)


# ------------------------------------------------------------------------------------------ network


@pytest.mark.parametrize("preset", ["mnist", "cifar10"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [32, 28, 16])
def test_shapes(preset: str, channels: int, size: int) -> None:
    config = C.ClassifierConfig(
        **{**C.PRESETS[preset].to_dict(), "in_channels": channels, "image_size": size, "num_classes": 7}
    )
    model = C.Classifier(config).eval()
    x = torch.rand(3, channels, size, size) * 2 - 1
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 7) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert model.whiten.out_channels == 2 * channels * 4


def test_preset_sizes_and_input_check() -> None:
    n_mnist = sum(p.numel() for p in C.Classifier(C.PRESETS["mnist"]).parameters())
    n_cifar = sum(p.numel() for p in C.Classifier(C.PRESETS["cifar10"]).parameters())
    assert 100_000 < n_mnist < 500_000 < n_cifar < 2_000_000
    with pytest.raises(ValueError, match="expects"):
        C.Classifier(C.PRESETS["cifar10"])(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError):
        C.ClassifierConfig(num_classes=3, class_names=("a", "b"))


def test_whitening_decorrelates_patches() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.rand(64, 1, 16, 16, generator=g)
    x = torch.cat([base, 0.5 * base + 0.1 * torch.rand(64, 1, 16, 16, generator=g)], 1) * 2 - 1
    model = C.Classifier(C.ClassifierConfig(in_channels=2, widths=(8,)))
    model.init_whitening(x, eps=1e-9)
    with torch.no_grad():
        h = model.whiten(x).permute(0, 2, 3, 1).reshape(-1, 16)[:, :8].double()  # the "+" half
    cov = torch.cov(h.T)
    assert torch.allclose(h.mean(0), torch.zeros(8, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(cov, torch.eye(8, dtype=torch.float64), atol=0.01)


def test_augmentations_keep_background_and_shape() -> None:
    g = torch.Generator().manual_seed(0)
    x = -torch.ones(4, 1, 32, 32)
    assert torch.equal(C._random_affine(x, g), x)  # empty digits stay empty: fill is -1, not 0
    y = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    t = C._random_translate(y, 1, g)
    assert t.shape == y.shape
    # each output image is the input shifted by at most 1 px: its centre 6x6 appears in the input
    for i in range(2):
        hits = [
            torch.equal(t[i, :, 1:7, 1:7], y[i, :, 1 + dy : 7 + dy, 1 + dx : 7 + dx])
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        ]
        assert any(hits)


# ------------------------------------------------------------------------------------------ training


def test_train_on_blobs_reaches_high_accuracy(trained: tuple[C.Classifier, dict], blobs) -> None:
    model, metrics = trained
    assert metrics["val_accuracy"] >= 0.95
    assert metrics["val_accuracy"] == pytest.approx(C.evaluate_accuracy(model, blobs[1]))
    assert metrics["steps"] == 3 * (1600 // 64) and metrics["epochs"] == pytest.approx(3.0)
    assert metrics["augment"] == "none" and metrics["n_train"] == 1600 and metrics["n_val"] == 500
    # temperature scaling: confidence on held-out real data tracks accuracy, NLL does not get worse
    assert model.config.temperature == metrics["temperature"] > 0
    assert abs(metrics["val_mean_confidence"] - metrics["val_accuracy"]) < 0.05
    assert metrics["val_nll"] <= metrics["val_nll_uncalibrated"] + 1e-9
    assert model.config.dataset == "gaussian-blobs" and model.config.image_size == 16
    noise = C.noise_baseline(model, n=200)
    assert noise["n"] == 200 and sum(noise["histogram"]) == 200
    assert metrics["noise_mean_confidence"] == pytest.approx(C.noise_baseline(model)["mean_confidence"])
    assert not model.training


def test_fit_temperature_recovers_known_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(20000, 5, generator=g, dtype=torch.float64)
    labels = torch.multinomial((z / 2.0).softmax(1), 1, generator=g).squeeze(1)
    assert C.fit_temperature(z, labels) == pytest.approx(2.0, rel=0.05)


def test_train_rejects_bad_arguments(blobs) -> None:
    with pytest.raises(ValueError, match="preset"):
        C.train_classifier(blobs[0], None, "imagenet", epochs=1)
    with pytest.raises(ValueError, match="augment"):
        C.train_classifier(blobs[0], None, "mnist", epochs=1, augment="mixup")


# ------------------------------------------------------------------------------------------ reports


def test_sample_report_uniform_histogram() -> None:
    k = 4
    classes = [0, 1, 2, 3, 3, 2, 1, 0]
    margin = math.log(60.0)  # softmax max = 60 / (60 + 3) = 0.952… > 0.9
    model = FixedLogits(one_hot_logits(classes, k, margin))
    r = C.sample_report(model, index_images(len(classes)), num_classes=k, batch_size=3)
    assert r["n"] == 8 and r["num_classes"] == 4
    assert r["histogram"] == [2, 2, 2, 2]
    assert r["class_fractions"] == [0.25] * 4
    assert r["entropy"] == pytest.approx(math.log(4), abs=1e-12)
    assert r["entropy_normalized"] == pytest.approx(1.0, abs=1e-12)
    assert r["kl_uniform"] == pytest.approx(0.0, abs=1e-12)
    assert r["mean_confidence"] == pytest.approx(60 / 63, abs=1e-6)  # logits come back as float32
    assert r["confident_fraction"] == 1.0


def test_sample_report_one_class_and_mixed_confidences() -> None:
    k = 5
    # logits [a, 0, 0, 0, 0] have max softmax e^a / (e^a + 4): a = log 4 → 0.5, a = log 396 → 0.99, a = 0 → 0.2
    table = torch.zeros(4, k, dtype=torch.float64)
    table[0, 2] = math.log(4)
    table[1, 2] = math.log(396)
    table[2, 2] = math.log(396)
    table[3, 2] = 0.01  # nearly uniform but class 2 wins
    r = C.sample_report(FixedLogits(table), index_images(4, channels=3))
    assert r["histogram"] == [0, 0, 4, 0, 0]
    assert r["entropy"] == pytest.approx(0.0, abs=1e-12)
    assert r["entropy_normalized"] == pytest.approx(0.0, abs=1e-12)
    assert r["kl_uniform"] == pytest.approx(math.log(5), abs=1e-12)
    last = math.exp(0.01) / (math.exp(0.01) + 4)
    assert r["mean_confidence"] == pytest.approx((0.5 + 0.99 + 0.99 + last) / 4, abs=1e-6)
    assert r["confident_fraction"] == 0.5

    # a 3:1 histogram, by hand
    model = FixedLogits(one_hot_logits([0, 0, 0, 1], 4, 10.0))
    r = C.sample_report(model, index_images(4))
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert r["histogram"] == [3, 1, 0, 0]
    assert r["entropy"] == pytest.approx(h, abs=1e-12)
    assert r["entropy_normalized"] == pytest.approx(h / math.log(4), abs=1e-12)
    assert r["kl_uniform"] == pytest.approx(0.75 * math.log(3) + 0.25 * math.log(1), abs=1e-12)
    with pytest.raises(ValueError, match="num_classes"):
        C.sample_report(model, index_images(4), num_classes=10)


def test_histogram_stats_direct() -> None:
    s = C.histogram_stats([5, 5, 5])
    assert s["entropy"] == pytest.approx(math.log(3)) and s["kl_uniform"] == pytest.approx(0.0, abs=1e-12)
    s = C.histogram_stats([0, 7])
    assert s["entropy"] == 0.0 and s["kl_uniform"] == pytest.approx(math.log(2))
    with pytest.raises(ValueError):
        C.histogram_stats([0, 0])


def test_agreement() -> None:
    model = FixedLogits(one_hot_logits([0, 1, 2, 3], 4, 5.0))
    images = index_images(4)
    assert C.agreement(model, images, [0, 1, 2, 3]) == 1.0
    assert C.agreement(model, images, np.array([0, 1, 0, 0])) == 0.5
    assert C.agreement(model, images, torch.tensor([3, 3, 3, 0])) == 0.0
    with pytest.raises(ValueError, match="labels"):
        C.agreement(model, images, [0, 1])


def test_predict_accepts_nhwc_and_native_mnist_size() -> None:
    config = C.ClassifierConfig(in_channels=1, widths=(8, 16), dataset="mnist")
    model = C.Classifier(config).eval()
    g = torch.Generator().manual_seed(0)
    x28 = torch.randint(0, 256, (5, 1, 28, 28), generator=g, dtype=torch.uint8)
    x32 = torch.nn.functional.pad(x28, (2, 2, 2, 2))
    ref = C.predict_logits(model, x32, autocast=False)
    assert torch.equal(C.predict_logits(model, x28, autocast=False), ref)  # 28 → 32 by zero padding
    nhwc = x32.permute(0, 2, 3, 1).numpy()
    assert torch.equal(C.predict_logits(model, nhwc, autocast=False), ref)
    with pytest.raises(ValueError, match="channels"):
        C.predict_logits(model, torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


# ------------------------------------------------------------------------------------------ files


def test_save_load_round_trip(trained, blobs, tmp_path: Path) -> None:
    model, metrics = trained
    out = C.save_classifier(model, tmp_path / "clf", {"test_accuracy": metrics["val_accuracy"]})
    assert sorted(p.name for p in out.iterdir()) == [C.CONFIG_FILE, C.WEIGHTS_FILE]
    loaded = C.load_classifier(out)
    assert loaded.config == model.config
    assert loaded.info["test_accuracy"] == metrics["val_accuracy"]
    x = D.to_float(blobs[1].images[:64])
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert torch.equal(C.predict_logits(loaded, blobs[1].images), C.predict_logits(model, blobs[1].images))
    import json

    doc = json.loads((out / C.CONFIG_FILE).read_text())
    assert doc["dataset"] == "gaussian-blobs" and doc["image_size"] == 16 and doc["channels"] == 1
    assert doc["class_names"] == [str(i) for i in range(10)] and doc["test_accuracy"] >= 0.95


def test_load_corrupt_or_mismatched_files_raise_value_error(trained, tmp_path: Path) -> None:
    model, _ = trained
    good = C.save_classifier(model, tmp_path / "good")

    def broken(name: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        for f in (C.CONFIG_FILE, C.WEIGHTS_FILE):
            (d / f).write_bytes((good / f).read_bytes())
        return d

    d = broken("garbage")
    (d / C.WEIGHTS_FILE).write_bytes(b"\x00\x01not a safetensors file" * 10)
    d2 = broken("truncated")
    raw = (good / C.WEIGHTS_FILE).read_bytes()
    (d2 / C.WEIGHTS_FILE).write_bytes(raw[: len(raw) // 2])
    d3 = broken("badjson")
    (d3 / C.CONFIG_FILE).write_text("{not json")
    d4 = broken("mismatch")
    (d4 / C.CONFIG_FILE).write_text(
        (good / C.CONFIG_FILE).read_text().replace('"widths": [\n      16', '"widths": [\n      24')
    )
    d5 = broken("wrongtype")
    (d5 / C.CONFIG_FILE).write_text(
        (good / C.CONFIG_FILE).read_text().replace('"image_size": 16', '"image_size": "16"')
    )
    for bad in (d, d2, d3, d4, d5, tmp_path / "missing"):
        with pytest.raises(ValueError) as e:
            C.load_classifier(bad)
        assert "\n" not in str(e.value) and str(bad) in str(e.value)
    with pytest.raises(ValueError, match="does not match"):
        C.load_classifier(d4)


def test_default_dir_honours_ddpm_cache(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    assert C.default_classifier_dir("cifar10") == tmp_path / "classifiers" / "cifar10"
    with pytest.raises(ValueError, match="train one"):
        C.load_default_classifier("cifar10")
    monkeypatch.delenv("DDPM_CACHE")
    assert C.default_classifier_dir("mnist") == Path.home() / ".cache" / "ddpm" / "classifiers" / "mnist"


# ------------------------------------------------------------------------------------------ errors, command line


def test_missing_default_classifier_error_is_typed_and_names_no_flag(
    monkeypatch, tmp_path: Path, capsys
) -> None:
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    with pytest.raises(C.ClassifierNotFoundError) as e:
        C.load_default_classifier("mnist")
    assert e.value.dataset == "mnist" and e.value.directory == tmp_path / "classifiers" / "mnist"
    assert "--" not in str(e.value) and "train_classifier" in str(e.value)  # the library names no flag
    # the command line adds the command that trains one, as one line, exit status 1
    images = tmp_path / "x.npz"
    np.savez(images, x=np.zeros((2, 28, 28, 1), np.uint8))
    assert C.cli.main(["report", "--images", str(images), "--dataset", "mnist"]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: no mnist classifier in {tmp_path / 'classifiers' / 'mnist'}; "
        "train one with: python -m ddpm.metrics.classifier train --dataset mnist\n"
    )
    assert C._main is C.cli.main  # the name ddpm.cli calls today


def test_cli_report_prints_sample_report(trained, tmp_path: Path, capsys) -> None:
    import json

    model, _ = trained
    out = C.save_classifier(model, tmp_path / "clf")
    x = D.load("gaussian-blobs", image_size=16, split="test", n=40).images
    np.savez(tmp_path / "x.npz", x=x.permute(0, 2, 3, 1).numpy())  # NHWC, as ddpm sample writes it
    assert C.cli.main(["report", "--images", str(tmp_path / "x.npz"), "--classifier", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == C.sample_report(C.load_classifier(out), x)


def test_divergence_is_a_classifier_error_and_a_floating_point_error(blobs) -> None:
    config = C.ClassifierConfig(in_channels=1, widths=(8,), preset="mnist")
    with pytest.raises(C.ClassifierDivergedError, match="diverged") as e:
        C.train_classifier(blobs[0], None, config, epochs=1, batch_size=64, lr=float("inf"))
    assert isinstance(e.value, FloatingPointError) and isinstance(e.value, C.ClassifierError)


def test_python_dash_m_runs_the_package(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "DDPM_CACHE": str(tmp_path), "PYTHONPATH": str(Path(C.__file__).parents[3])}
    args = [
        sys.executable,
        "-m",
        "ddpm.metrics.classifier",
        "report",
        "--images",
        "x.npz",
        "--dataset",
        "mnist",
    ]
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error: no mnist classifier in ") and r.stderr.count("\n") == 1
