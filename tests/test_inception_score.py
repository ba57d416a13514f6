"""Inception Score: the formula against closed forms and torch-fidelity's, the classifier against pytorch-fid's
architecture and torch-fidelity's extractor (a randomly initialised network saved in the weights file's format),
the checks on that file, and the commands (``ddpm is``, IS in ``ddpm eval``)."""

from __future__ import annotations

import functools
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import Payload, pinned_threads, run_cli
from ddpm.metrics import isc

# ------------------------------------------------------------------------------------------------- the formula


def _one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k)[labels]


def test_is_is_one_for_a_classifier_certain_of_one_class():
    """p(y|x) = p(y) for every x: every KL term is 0, IS = exp(0) = 1 in every split."""
    probs = _one_hot(np.full(50, 3), 10)
    assert isc.inception_score_from_probs(probs) == (1.0, 0.0)
    logits = 40.0 * probs  # p(y=3|x) = 1 - 9·e^-40
    mean, std = isc.inception_score_from_logits(logits)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [2, 7, 300])
def test_is_is_k_for_balanced_samples_certain_over_k_classes(k):
    """One-hot p(y|x) with each of k classes equally often in every split: p_split(y) = 1/k, every KL term is
    log k, IS = k exactly, std 0 (in order). Shuffled, a split with class counts c has IS = exp(H(c / n))."""
    splits, m = 10, 2
    labels = np.tile(np.arange(k), splits * m)  # rows i·N/10 … (i+1)·N/10 hold each class m times
    probs = _one_hot(labels, k)
    mean, std = isc.inception_score_from_probs(probs, shuffle=False)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9 * k)
    assert isc.inception_score_from_logits(60.0 * probs, shuffle=False)[0] == pytest.approx(k, rel=1e-9)

    n = len(labels)
    shuffled = labels[np.random.RandomState(2020).permutation(n)]  # torch-fidelity's default order
    scores = []
    for i in range(splits):
        freq = np.bincount(shuffled[i * n // splits : (i + 1) * n // splits], minlength=k) / (n // splits)
        scores.append(math.exp(-sum(f * math.log(f) for f in freq if f > 0)))
    mean, std = isc.inception_score_from_probs(probs)
    assert mean == pytest.approx(np.mean(scores), rel=1e-12) and std == pytest.approx(
        np.std(scores), abs=1e-9
    )
    assert mean < k  # a shuffled split is not balanced


def test_is_of_two_soft_classes_is_the_closed_form():
    """p(y|x) = (a, 1−a) and (1−a, a) alternating: p(y) = (½, ½), KL = log 2 − H(a), IS = 2·exp(−H(a))."""
    a = 0.8
    probs = np.array([[a, 1 - a], [1 - a, a]] * 20)
    entropy = -(a * math.log(a) + (1 - a) * math.log(1 - a))
    mean, std = isc.inception_score_from_probs(probs, splits=4, shuffle=False)
    assert mean == pytest.approx(2 * math.exp(-entropy), rel=1e-12) and std == pytest.approx(0, abs=1e-12)
    mean, _ = isc.inception_score_from_logits(np.log(probs), splits=4, shuffle=False)
    assert mean == pytest.approx(2 * math.exp(-entropy), rel=1e-12)


@pytest.mark.parametrize("shuffle", [True, False])
def test_is_agrees_with_torch_fidelity_on_identical_logits(shuffle):
    metric_isc = pytest.importorskip("torch_fidelity.metric_isc")
    rng = np.random.default_rng(0)
    n = 1003  # parts of 100 and 101 rows: the split boundaries i·N // splits must agree too
    logits = rng.standard_normal((n, isc.NUM_CLASSES)) * 4 + rng.standard_normal(isc.NUM_CLASSES) * 2
    theirs = metric_isc.isc_features_to_metric(
        torch.from_numpy(logits), splits=10, shuffle=shuffle, rng_seed=2020
    )
    mean, std = isc.inception_score_from_logits(logits, shuffle=shuffle)
    assert mean > 1.5  # far from the trivial 1
    assert mean == pytest.approx(theirs["inception_score_mean"], rel=1e-12)
    assert std == pytest.approx(theirs["inception_score_std"], rel=1e-9)


def test_is_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 10 images, got 9"):
        isc.inception_score_from_logits(np.zeros((9, 5)))
    with pytest.raises(ValueError, match="NaN"):
        isc.inception_score_from_logits(np.full((10, 5), np.nan))
    with pytest.raises(ValueError, match="sum to 1"):
        isc.inception_score_from_probs(np.full((10, 5), 0.3))
    with pytest.raises(ValueError, match="shape"):
        isc.inception_score_from_logits(np.zeros(10))
    with pytest.raises(ValueError, match="splits"):
        isc.inception_score_from_logits(np.zeros((10, 5)), splits=0)


# ------------------------------------------------------------------------------------- the network and its file


@functools.cache
def _random_state_cached(seed: int) -> dict[str, torch.Tensor]:
    return _make_random_state(seed)


def _random_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A fresh copy of the random state dict of ``seed`` (made once)."""
    return {k: v.clone() for k, v in _random_state_cached(seed).items()}


def _make_random_state(seed: int) -> dict[str, torch.Tensor]:
    """A random network of the architecture, scaled so that its logits differ between images (PyTorch's default
    initialisation shrinks the activations layer after layer), as the weights file's state dict."""
    torch.manual_seed(seed)
    net = isc.build_network()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.7, 1.3)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.7, 1.3)
        net.fc.weight.normal_(0, FC_STD)
        net.fc.bias.normal_(0, 1.0)
    return net.state_dict()


FC_STD = 0.25


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inception") / isc.WEIGHTS_FILENAME
    torch.save(_random_state(), path)
    return path


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Four different uint8 RGB images [4, 32, 32, 3], as ``ddpm sample`` writes them."""
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 255, 32)
    return np.stack(
        [
            rng.integers(0, 256, (32, 32, 3)),
            np.broadcast_to(ramp[:, None, None], (32, 32, 3)),
            np.broadcast_to(ramp[None, :, None] * [1, 0, 0.5], (32, 32, 3)),
            np.full((32, 32, 3), 200),
        ]
    ).astype(np.uint8)


@pytest.fixture(scope="module")
def classifier(weights_file) -> isc.InceptionClassifier:
    return isc.InceptionClassifier(weights_file, device="cpu", threads=1)


@pytest.fixture(scope="module")
def logits(classifier, images) -> np.ndarray:
    return classifier(images)


def _pytorch_fid_network(monkeypatch, state: dict[str, torch.Tensor]) -> nn.Module:
    """pytorch-fid's own ``fid_inception_v3()`` with ``state`` where it would download the weights file: it loads
    them with ``load_state_dict`` (strict), so it accepts ``state`` only if the keys and shapes are the file's."""
    pf = pytest.importorskip("pytorch_fid.inception")
    monkeypatch.setattr(pf, "load_state_dict_from_url", lambda url, **kw: state)
    return pf.fid_inception_v3().eval()


def test_random_network_in_the_files_format_loads_strictly_as_pytorch_fids(weights_file, monkeypatch):
    state = torch.load(weights_file, weights_only=True)
    theirs = _pytorch_fid_network(monkeypatch, state)
    assert {k: v.shape for k, v in theirs.state_dict().items()} == {k: v.shape for k, v in state.items()}
    ours = isc.load_network(weights_file)
    x = torch.randn(2, 3, 107, 107, generator=torch.Generator().manual_seed(0))
    with pinned_threads(1), torch.no_grad():
        ref, got = theirs(x), ours(x)
    assert got.shape == (2, isc.NUM_CLASSES)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    assert float((ref[0] - ref[1]).abs().max()) > 0.1  # the inputs are told apart: the check is not vacuous


def test_counters_missing_from_an_old_file_are_accepted(tmp_path):
    """Files written by old PyTorch versions lack BatchNorm's ``num_batches_tracked`` (unused in evaluation)."""
    state = {k: v for k, v in _random_state().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    net = isc.load_network(tmp_path / "old.pth")
    torch.testing.assert_close(net.fc.weight, state["fc.weight"], rtol=0, atol=0)


def _write_broken(kind: str, path: Path, marker: Path) -> None:
    state = _random_state()
    if kind == "missing key":
        del state["Mixed_6c.branch7x7_2.conv.weight"]
    elif kind == "extra key":
        state["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    elif kind == "wrong shape":
        state["fc.weight"] = torch.zeros(1000, 2048)  # torchvision's 1000-class head
    elif kind == "non-finite":
        state["Conv2d_1a_3x3.conv.weight"][0, 0, 0, 0] = float("nan")
    if kind in ("missing key", "extra key", "wrong shape", "non-finite"):
        torch.save(state, path)
    elif kind == "truncated":
        torch.save(state, path)
        path.write_bytes(path.read_bytes()[:100_000])
    elif kind == "pickle":
        torch.save(Payload(marker), path)
    elif kind == "a tensor":
        torch.save(torch.zeros(3), path)
    else:  # pragma: no cover
        raise AssertionError(kind)


BREAKS = {
    "missing key": "1 missing (Mixed_6c.branch7x7_2.conv.weight)",
    "extra key": "1 unexpected (AuxLogits.fc.weight)",
    "wrong shape": "fc.weight [1000, 2048] instead of [1008, 2048]",
    "non-finite": "NaN",
    "truncated": "not a PyTorch weights file",
    "pickle": "not a PyTorch weights file",
    "a tensor": "not a state dict",
}


@pytest.mark.parametrize("kind", sorted(BREAKS))
def test_a_wrong_file_is_refused_in_one_line(kind, tmp_path):
    path, marker = tmp_path / isc.WEIGHTS_FILENAME, tmp_path / "pwned"
    _write_broken(kind, path, marker)
    with pytest.raises(isc.InceptionWeightsError) as e:
        isc.InceptionClassifier(path)
    msg = str(e.value)
    assert BREAKS[kind] in msg and "\n" not in msg, msg
    assert isc.WEIGHTS_FILENAME in msg and isc.WEIGHTS_URL in msg, msg
    assert not marker.exists()  # weights_only: the pickle's code never ran


def test_without_a_file_the_error_says_which_file_and_where_to_get_it(monkeypatch, images, tmp_path):
    monkeypatch.delenv(isc.WEIGHTS_ENV, raising=False)
    for call in (lambda: isc.InceptionClassifier(), lambda: isc.inception_score(images, splits=2)):
        with pytest.raises(isc.InceptionWeightsError, match="no Inception weights file given") as e:
            call()
        assert isc.WEIGHTS_URL in str(e.value) and isc.WEIGHTS_ENV in str(e.value)
    with pytest.raises(isc.InceptionWeightsError, match="no such file"):
        isc.InceptionClassifier(tmp_path / "nowhere.pth")
    monkeypatch.setenv(isc.WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(isc.InceptionWeightsError, match="nowhere.pth: no such file"):
        isc.InceptionClassifier()


# --------------------------------------------------------------------------- the classifier against torch-fidelity


def test_logits_and_score_agree_with_torch_fidelity(weights_file, images, logits):
    """torch-fidelity's Inception-v3 extractor, given the same weights file, returns the same ``logits_unbiased``
    of the same uint8 images (its TF1 resize and (x − 128)/128 against ours), and its IS of them is ours."""
    fe_mod = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    metric_isc = pytest.importorskip("torch_fidelity.metric_isc")
    extractor = fe_mod.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["logits_unbiased"], feature_extractor_weights_path=str(weights_file)
    ).eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with pinned_threads(1), torch.no_grad():
        (theirs,) = extractor(x)
    theirs = theirs.double().numpy()
    assert logits.shape == (4, isc.NUM_CLASSES)
    np.testing.assert_allclose(logits, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
    assert np.abs(theirs[0] - theirs[3]).max() > 0.5  # different images, different logits
    ref = metric_isc.isc_features_to_metric(torch.from_numpy(theirs), splits=2)
    mean, std = isc.inception_score_from_logits(logits, splits=2)
    assert mean > 1.03  # the random classifier is not indifferent
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-5)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-3, abs=1e-6)


def test_logits_leave_out_the_bias_and_repeat_grayscale(classifier, weights_file, images, logits):
    state = torch.load(weights_file, weights_only=True)
    net = isc.load_network(weights_file)
    x = classifier.preprocess(torch.from_numpy(images[:2]).permute(0, 3, 1, 2))
    with pinned_threads(1), torch.no_grad():
        biased = net(x).double().numpy()
    np.testing.assert_allclose(logits[:2] + state["fc.bias"].double().numpy(), biased, rtol=1e-5, atol=1e-4)
    gray = images[:1, :, :, 0]
    np.testing.assert_allclose(
        classifier(gray), classifier(np.repeat(gray[..., None], 3, axis=3)), rtol=0, atol=0
    )


# ------------------------------------------------------------------------------------------------- the commands


def _is_line(mean: float, std: float) -> str:
    return f"IS {mean:.4f} ± {std:.4f}"


def test_is_command_prints_the_librarys_score(weights_file, images, logits, tmp_path, capsys, monkeypatch):
    npz = tmp_path / "samples.npz"
    np.savez(npz, x=images)
    expected = _is_line(*isc.inception_score_from_logits(logits, splits=2))
    monkeypatch.delenv(isc.WEIGHTS_ENV, raising=False)
    code, out, err = run_cli(
        capsys, "is", "--images", str(npz), "--inception-weights", str(weights_file), "--splits", "2"
    )
    assert code == 0, err
    assert out.splitlines()[-1] == expected, out
    assert "4 in 2 splits" in out
    monkeypatch.setenv(isc.WEIGHTS_ENV, str(weights_file))  # the same file from the environment
    code, out, err = run_cli(capsys, "is", "--images", str(npz), "--splits", "2", "--n", "4")
    assert code == 0 and out.splitlines()[-1] == expected, err


def _one_error_line(code: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("ddpm: error:"), err
    return lines[0]


def test_is_command_without_the_file_fails_in_one_line(images, tmp_path, capsys, monkeypatch):
    npz = tmp_path / "samples.npz"
    np.savez(npz, x=images)
    monkeypatch.delenv(isc.WEIGHTS_ENV, raising=False)
    line = _one_error_line(*run_cli(capsys, "is", "--images", str(npz), "--splits", "2")[::2])
    assert isc.WEIGHTS_FILENAME in line and isc.WEIGHTS_URL in line and "--inception-weights" in line, line
    missing = tmp_path / "missing.pth"
    line = _one_error_line(
        *run_cli(capsys, "is", "--images", str(npz), "--inception-weights", str(missing))[::2]
    )
    assert f"{missing}: no such file" in line and isc.WEIGHTS_URL in line, line


def test_is_command_with_fewer_images_than_splits_fails_in_one_line(weights_file, images, tmp_path, capsys):
    npz = tmp_path / "samples.npz"
    np.savez(npz, x=images)
    argv = ["is", "--images", str(npz), "--inception-weights", str(weights_file)]  # 10 splits, 4 images
    line = _one_error_line(*run_cli(capsys, *argv)[::2])
    assert "needs at least 10 images, got 4" in line, line


def test_eval_reports_is_with_the_file_and_says_once_that_it_skips_it_without(
    tiny_run, weights_file, tmp_path, capsys, monkeypatch
):
    from ddpm.pipeline import generate, load_model

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # eval appends to the run's log
    monkeypatch.delenv(isc.WEIGHTS_ENV, raising=False)
    argv = ["eval", str(run), "--n", "4", "--steps", "2", "--no-fid", "--no-progress"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert out.count("IS skipped") == 1 and isc.WEIGHTS_FILENAME in out, out
    code, out, err = run_cli(capsys, *argv, "--inception-weights", str(weights_file), "--is-splits", "2")
    assert code == 0, err
    with pinned_threads(1):
        samples = generate(load_model(run), 4, steps=2, seed=0)
        expected = isc.inception_score(samples, weights_file, splits=2)
    assert f"{_is_line(*expected)}  (2 splits)" in out.splitlines(), out
    assert "IS skipped" not in out
