"""Tests for ddpm.data: IDX / CIFAR pickle / folder+zip readers, pixel conversions, splits and Batches."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import data as D

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MNIST_DIR = SHARED / "mnist"
CIFAR_ZIP = SHARED / "cifar10" / "cifar10-jpeg.zip"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------------------------------ helpers


def idx_bytes(arr: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: 0, 0, 0x08, ndim, big-endian dims, raw bytes."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_idx_pair(
    directory: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = True
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
        raw = idx_bytes(arr)
        (directory / f"{prefix}-{kind}{suffix}").write_bytes(gzip.compress(raw) if gz else raw)


def fake_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def png_bytes(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def ids_data(n: int) -> D.ImageData:
    """ImageData whose labels are example ids 0..n-1 and whose pixels encode the id too."""
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    images[:, 0, 0, 1] = torch.arange(n) // 256
    images[:, 0, 1, 0] = 255  # an asymmetric pixel, to see horizontal flips
    return D.ImageData(images, torch.arange(n), [str(i) for i in range(n)], "ids")


# ------------------------------------------------------------------------------------------ IDX / MNIST


def test_idx_gz_roundtrip_exact(tmp_path: Path) -> None:
    images, labels = fake_digits(7)
    write_idx_pair(tmp_path, "t10k", images, labels)
    d = D.load("mnist", tmp_path, split="test", image_size=28)
    assert d.images.shape == (7, 1, 28, 28) and d.images.dtype == torch.uint8
    assert torch.equal(d.images[:, 0], torch.from_numpy(images))
    assert d.labels.dtype == torch.int64 and d.labels.tolist() == labels.tolist()
    assert d.num_classes == 10 and d.channels == 1 and d.image_size == 28 and len(d) == 7


def test_mnist_default_is_zero_padded_32(tmp_path: Path) -> None:
    images, labels = fake_digits(3)
    write_idx_pair(tmp_path, "t10k", images, labels, gz=False)  # uncompressed works as well
    d = D.load("mnist", tmp_path, split="test")
    assert d.images.shape == (3, 1, 32, 32)
    assert torch.equal(d.images[:, 0, 2:30, 2:30], torch.from_numpy(images))
    border = d.images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.sum() == 0
    assert D.load("mnist", tmp_path, split="test", image_size=16).images.shape == (3, 1, 16, 16)


def test_mnist_train_falls_back_to_test_with_warning(tmp_path: Path) -> None:
    images, labels = fake_digits(4)
    write_idx_pair(tmp_path, "t10k", images, labels)
    with pytest.warns(UserWarning, match="test split") as rec:
        d = D.load("mnist", tmp_path, split="train", image_size=28)
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    assert torch.equal(d.images[:, 0], torch.from_numpy(images))


def test_mnist_train_files_preferred(tmp_path: Path) -> None:
    write_idx_pair(tmp_path, "t10k", *fake_digits(4, seed=1))
    images, labels = fake_digits(6, seed=2)
    write_idx_pair(tmp_path, "train", images, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = D.load("mnist", tmp_path, image_size=28)
    assert len(d) == 6 and torch.equal(d.images[:, 0], torch.from_numpy(images))


def test_fashion_mnist_torchvision_layout(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets as tvd

    # torchvision's own layout (ROOT/FashionMNIST/raw, all four files uncompressed) goes through its class.
    raw = tmp_path / "FashionMNIST" / "raw"
    images, labels = fake_digits(5, seed=3)
    write_idx_pair(raw, "train", images, labels, gz=False)
    d = D.load("fashion-mnist", tmp_path, image_size=28)  # only train present: read by our parser
    assert torch.equal(d.images[:, 0], torch.from_numpy(images)) and d.labels.tolist() == labels.tolist()
    assert d.class_names[0] == "T-shirt/top" and d.name == "fashion-mnist"
    write_idx_pair(raw, "t10k", *fake_digits(2, seed=4), gz=False)
    calls = []
    real_init = tvd.FashionMNIST.__init__
    monkeypatch.setattr(
        tvd.FashionMNIST, "__init__", lambda self, *a, **k: calls.append(1) or real_init(self, *a, **k)
    )
    d2 = D.load("fashion-mnist", tmp_path, image_size=28)
    assert calls and torch.equal(d2.images, d.images) and torch.equal(d2.labels, d.labels)


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda raw: b"\x00\x00\x0b\x03" + raw[4:], "IDX header says"),  # int16 → size mismatch
        (lambda raw: b"\x00\x00\x09\x03" + raw[4:], "expected uint8 images"),  # int8
        (lambda raw: b"\x00\x00\x08\x02" + struct.pack(">II", 2, 784) + raw[16:], "expected uint8 images"),
        (lambda raw: b"\x12\x34\x08\x03" + raw[4:], "not an IDX file"),  # bad magic
        (lambda raw: raw[:-10], "corrupt"),  # truncated
        (lambda raw: raw[:6], "corrupt"),  # truncated header
    ],
)
def test_corrupt_idx_errors_clearly(tmp_path: Path, corrupt, match: str) -> None:
    images, labels = fake_digits(2)
    write_idx_pair(tmp_path, "t10k", images, labels)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(corrupt(idx_bytes(images))))
    with pytest.raises(D.DataError, match=match) as err:
        D.load("mnist", tmp_path, split="test")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_corrupt_gzip_and_label_mismatch(tmp_path: Path) -> None:
    images, labels = fake_digits(3)
    write_idx_pair(tmp_path, "t10k", images, labels)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels[:2])))
    with pytest.raises(D.DataError, match="expected 3 labels"):
        D.load("mnist", tmp_path, split="test")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"junk" * 10)
    with pytest.raises(D.DataError, match="cannot read IDX"):
        D.load("mnist", tmp_path, split="test")


def test_missing_data_offline_is_one_line_and_never_downloads(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets as tvd

    def no_download(*args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(tvd.MNIST, "download", no_download)
    monkeypatch.setattr(tvd.CIFAR10, "download", no_download)
    for name in ("mnist", "fashion-mnist", "cifar10"):
        with pytest.raises(D.DataError) as err:
            D.load(name, tmp_path / "nowhere")
        msg = str(err.value)
        assert "\n" not in msg and str(tmp_path / "nowhere") in msg and "data.root" in msg
        assert " --" not in msg  # a library error names no command-line flag
        assert isinstance(err.value, ValueError)


# ------------------------------------------------------------------------------------------ CIFAR-10 pickles


def write_cifar_batches(root: Path, per_batch: int = 4, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """torchvision's layout: ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    all_data, all_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        entry = {
            "batch_label": name,
            "labels": labels,
            "data": data,
            "filenames": [f"{i}.png" for i in labels],
        }
        (base / name).write_bytes(pickle.dumps(entry, protocol=2))
        if name != "test_batch":
            all_data.append(data)
            all_labels += labels
    meta = {"num_cases_per_batch": per_batch, "label_names": D.CIFAR10_CLASSES, "num_vis": 3072}
    (base / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return np.concatenate(all_data), all_labels


def test_cifar_pickles_synthetic(tmp_path: Path) -> None:
    import torchvision.datasets as tvd

    data, labels = write_cifar_batches(tmp_path)
    # torchvision checks the published MD5s, so it rejects (synthetic) batches: we read those with a
    # numpy-only unpickler instead (warning); torchvision only ever unpickles files that pass its check.
    with pytest.raises(RuntimeError, match="corrupted"):
        tvd.CIFAR10(str(tmp_path), train=True, download=False)
    with pytest.warns(UserWarning, match="MD5"):
        d = D.load("cifar10", tmp_path)
    assert d.images.shape == (20, 3, 32, 32) and d.images.dtype == torch.uint8
    assert torch.equal(d.images, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    assert d.labels.tolist() == labels and d.class_names == D.CIFAR10_CLASSES
    with pytest.warns(UserWarning, match="MD5"):
        t = D.load("cifar10", tmp_path, split="test", image_size=16)
    assert t.images.shape == (4, 3, 16, 16)


def test_cifar_pickle_refuses_code(tmp_path: Path) -> None:
    write_cifar_batches(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    evil = {"data": np.zeros((1, 3072), np.uint8), "labels": [Evil()]}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(evil))
    with (
        pytest.warns(UserWarning, match="MD5"),
        pytest.raises(D.DataError, match="refusing to load posix.getcwd"),
    ):
        D.load("cifar10", tmp_path, split="test")


# ------------------------------------------------------------------------------------------ folders and zips


def make_tree(rng: np.random.Generator) -> dict[str, bytes]:
    """Relative path → file bytes: train/{cat,dog}, test/{cat,dog}, PNG and JPEG, plus junk."""
    files = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                arr = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
                files[f"{split}/{cls}/{i}.png"] = png_bytes(arr)
            files[f"{split}/{cls}/x.jpg"] = png_bytes(
                rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), "JPEG"
            )
    files["train/cat/broken.png"] = b"\x89PNG\r\n\x1a\n" + b"garbage" * 5
    files["train/dog/notes.txt"] = b"not an image"
    return files


def test_folder_directory(tmp_path: Path) -> None:
    files = make_tree(np.random.default_rng(0))
    for rel, raw in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(raw)
    with pytest.warns(UserWarning, match=r"1 unreadable image.*broken\.png.*1 non-image") as rec:
        d = D.load("folder", tmp_path)
    assert len(rec) == 1
    assert d.images.shape == (8, 3, 12, 12) and d.class_names == ["cat", "dog"]
    assert d.labels.tolist() == [0] * 4 + [1] * 4
    expected = np.array(Image.open(io.BytesIO(files["train/cat/0.png"])))
    assert torch.equal(d.images[0].permute(1, 2, 0), torch.from_numpy(expected))
    t = D.load("folder", tmp_path, split="test", image_size=8)
    assert t.images.shape == (6, 3, 8, 8) and t.labels.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(D.DataError, match="'val'"):
        D.load("folder", tmp_path, split="val")


def test_folder_zip_in_memory_and_unsafe_entries(tmp_path: Path) -> None:
    files = make_tree(np.random.default_rng(1))
    zpath = tmp_path / "sub" / "images.zip"
    zpath.parent.mkdir()
    with zipfile.ZipFile(zpath, "w") as zf:
        for rel, raw in files.items():
            zf.writestr(f"top/{rel}", raw)  # a lone top folder above the splits is looked through
        zf.writestr(zipfile.ZipInfo("../evil.png"), png_bytes(np.zeros((12, 12, 3), np.uint8)))
        zf.writestr(zipfile.ZipInfo("/abs/evil.png"), png_bytes(np.zeros((12, 12, 3), np.uint8)))
        zf.writestr(zipfile.ZipInfo("top/train/../../evil2.png"), b"x")
    assert "../evil.png" in zipfile.ZipFile(zpath).namelist()
    with pytest.warns(UserWarning, match="3 unsafe zip entries") as rec:
        d = D.load("folder", zpath)
    assert len(rec) == 1
    assert d.images.shape == (8, 3, 12, 12) and d.class_names == ["cat", "dog"]
    expected = np.array(Image.open(io.BytesIO(files["train/dog/1.png"])))
    assert torch.equal(d.images[5].permute(1, 2, 0), torch.from_numpy(expected))
    assert not (tmp_path / "evil.png").exists() and sorted(os.listdir(tmp_path / "sub")) == ["images.zip"]
    with pytest.warns(UserWarning, match="unsafe"):
        d1 = D.load("folder", zpath, max_per_class=1, channels=1)
    assert d1.images.shape == (2, 1, 12, 12)


def test_folder_gray_flat_resize_and_empty(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    gray = [rng.integers(0, 256, (10, 14), dtype=np.uint8) for _ in range(3)]
    for i, g in enumerate(gray):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(g))
    d = D.load("folder", tmp_path, image_size=6)
    assert d.images.shape == (3, 1, 6, 6)  # all gray → one channel; 10×14 center-cropped then resized
    assert d.class_names == [tmp_path.name] and d.labels.tolist() == [0, 0, 0]
    d10 = D.load("folder", tmp_path)  # size from the first image's shorter side; crop keeps pixels
    assert torch.equal(d10.images[0, 0], torch.from_numpy(gray[0][:, 2:12]))
    assert D.load("folder", tmp_path, channels=3).images.shape == (3, 3, 10, 10)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(D.DataError, match="no readable images"):
        D.load("folder", empty)
    with pytest.raises(D.DataError, match="does not exist"):
        D.load("folder", tmp_path / "missing")


def test_color_to_gray_matches_pil(tmp_path: Path) -> None:
    arr = np.random.default_rng(3).integers(0, 256, (9, 9, 3), dtype=np.uint8)
    (tmp_path / "a.png").write_bytes(png_bytes(arr))
    d = D.load("folder", tmp_path, channels=1)
    assert torch.equal(d.images[0, 0], torch.from_numpy(np.array(Image.fromarray(arr).convert("L"))))


def test_cifar10_from_zip_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    zpath = tmp_path / "cifar10-jpeg.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for cls in reversed(D.CIFAR10_CLASSES):
            for split in ("train", "test"):
                zf.writestr(f"{split}/{cls}/0000.png", png_bytes(rng.integers(0, 256, (32, 32, 3), np.uint8)))
    for root in (zpath, tmp_path):  # the zip itself, or its directory
        d = D.load("cifar10", root, split="test")
        assert d.images.shape == (10, 3, 32, 32) and d.labels.tolist() == list(range(10))
        assert d.class_names == D.CIFAR10_CLASSES and d.name == "cifar10"


# ------------------------------------------------------------------------------------------ no-file datasets


def test_digits() -> None:
    train, test = D.load("digits"), D.load("digits", split="test")
    assert train.images.shape == (1617, 1, 16, 16) and test.images.shape == (180, 1, 16, 16)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert set(train.labels.tolist()) == set(range(10)) and train.num_classes == 10
    assert D.load("digits", image_size=32).images.shape == (1617, 1, 32, 32)
    assert D.load("digits", image_size=8).images.max() == 255
    from sklearn.datasets import load_digits

    sk = load_digits()
    native = D.load("digits", image_size=8)
    pool = {bytes(np.rint(im * 255 / 16).astype(np.uint8)) for im in sk.images}
    assert all(bytes(x[0].numpy()) in pool for x in native.images[:50])
    assert torch.equal(D.load("digits").images, train.images)  # deterministic split


def test_gaussian_blobs() -> None:
    a, b = D.load("gaussian-blobs", n=200), D.load("blobs", n=200)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (200, 1, 16, 16) and a.images.dtype == torch.uint8
    assert torch.bincount(a.labels).tolist() == [20] * 10 and a.num_classes == 10
    assert not torch.equal(D.load("gaussian-blobs", n=200, seed=1).images, a.images)
    assert not torch.equal(D.load("gaussian-blobs", n=200, split="test").images, a.images)
    c = D.load("gaussian-blobs", n=30, image_size=32, channels=3)
    assert c.images.shape == (30, 3, 32, 32) and c.images.max() > 100
    # classes differ: per-class mean images are far apart
    means = torch.stack([a.images[a.labels == k].float().mean(0) for k in range(10)])
    assert torch.cdist(means.flatten(1), means.flatten(1)).add(torch.eye(10) * 1e9).min() > 50


# ------------------------------------------------------------------------------------------ conversions


def test_to_float_to_uint8_roundtrip() -> None:
    x = torch.arange(256, dtype=torch.uint8).view(4, 1, 8, 8)
    f = D.to_float(x)
    assert f.shape == x.shape and f.dtype == torch.float32
    assert f.min() == -1.0 and f.max() == 1.0
    assert torch.equal(D.to_uint8(f), x)
    assert torch.equal(D.to_uint8(D.to_float(x, torch.float64)), x)
    assert D.to_uint8(torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0])).tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(TypeError):
        D.to_float(f)


def test_image_data_validation_and_subset() -> None:
    d = ids_data(10)
    s = d.subset([3, 1])
    assert s.labels.tolist() == [3, 1] and s.images[:, 0, 0, 0].tolist() == [3, 1]
    assert d.subset(slice(2, 4)).labels.tolist() == [2, 3]
    assert d.subset(d.labels > 7).labels.tolist() == [8, 9]
    with pytest.raises(D.DataError):
        D.ImageData(torch.zeros(2, 1, 4, 4), torch.zeros(2), ["a"], "x")
    with pytest.raises(D.DataError):
        D.ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3), ["a"], "x")


def test_train_val_split() -> None:
    d = ids_data(1000)
    tr, va = D.train_val_split(d, 0.2, seed=5)
    assert len(tr) == 800 and len(va) == 200
    assert set(tr.labels.tolist()).isdisjoint(va.labels.tolist())
    assert sorted(tr.labels.tolist() + va.labels.tolist()) == list(range(1000))
    tr2, va2 = D.train_val_split(d, 0.2, seed=5)
    assert torch.equal(va.labels, va2.labels) and torch.equal(tr.images, tr2.images)
    assert not torch.equal(D.train_val_split(d, 0.2, seed=6)[1].labels, va.labels)
    assert va.labels.tolist() != list(range(200))  # random, not a prefix


# ------------------------------------------------------------------------------------------ Batches


def ids_of(x: torch.Tensor) -> list[int]:
    u = D.to_uint8(x)
    flipped = u[:, 0, 1, -1] == 255  # the marker pixel moved to the right edge
    ids = torch.where(flipped, u[:, 0, 0, -1].long() + 256 * u[:, 0, 0, -2].long(), 0)
    ids = torch.where(~flipped, u[:, 0, 0, 0].long() + 256 * u[:, 0, 0, 1].long(), ids)
    return ids.tolist()


def take(it: D.Batches, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(it) for _ in range(k)]


def test_batches_shapes_and_epochs() -> None:
    d = ids_data(10)
    it = D.Batches(d, 3, seed=1)
    assert len(it) == 3
    x, y = next(it)
    assert x.shape == (3, 1, 4, 4) and x.dtype == torch.float32 and y.shape == (3,) and y.dtype == torch.int64
    assert ids_of(x) == y.tolist()
    epoch0 = y.tolist() + [v for _, y in take(it, 2) for v in y.tolist()]
    assert len(set(epoch0)) == 9  # drop_last: 9 of 10 per epoch
    assert it.state_dict() == {"epoch": 0, "position": 9}
    next(it)
    assert it.state_dict() == {"epoch": 1, "position": 3}
    full = D.Batches(d, 3, seed=1, drop_last=False)
    assert len(full) == 4
    ys = [y.tolist() for _, y in take(full, 4)]
    assert [len(v) for v in ys] == [3, 3, 3, 1] and sorted(sum(ys, [])) == list(range(10))
    assert sum(ys, []) != list(range(10))
    plain = D.Batches(d, 5, shuffle=False)
    assert next(plain)[1].tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(D.DataError):
        D.Batches(d, 11)


def test_batches_deterministic_and_seeded() -> None:
    d = ids_data(50)
    a = [y.tolist() for _, y in take(D.Batches(d, 8, seed=3, flip=True), 20)]
    b = [y.tolist() for _, y in take(D.Batches(d, 8, seed=3, flip=True), 20)]
    c = [y.tolist() for _, y in take(D.Batches(d, 8, seed=4, flip=True), 20)]
    assert a == b and a != c
    assert a[:6] != a[6:12]  # a new permutation each epoch


def test_batches_flip() -> None:
    d = ids_data(64)
    xs = torch.cat([x for x, _ in take(D.Batches(d, 16, seed=0, flip=True), 4)])
    flipped = (D.to_uint8(xs)[:, 0, 1, -1] == 255).float().mean()
    assert 0.25 < flipped < 0.75
    ys = torch.cat([y for _, y in take(D.Batches(d, 16, seed=0, flip=True), 4)])
    ref = D.to_float(d.images[ys])
    same = (xs == ref).flatten(1).all(1) | (xs == ref.flip(-1)).flatten(1).all(1)
    assert same.all()
    assert (D.to_uint8(next(D.Batches(d, 64))[0])[:, 0, 1, -1] == 0).all()  # no flips unless asked


@pytest.mark.parametrize("k", [0, 2, 5, 7, 13])
def test_batches_resume_mid_epoch(k: int) -> None:
    d = ids_data(37)
    it = D.Batches(d, 5, seed=11, flip=True)
    take(it, k)
    state = it.state_dict()
    cont = take(it, 10)
    fresh = D.Batches(d, 5, seed=11, flip=True)
    fresh.load_state_dict(dict(state))
    resumed = take(fresh, 10)
    for (x1, y1), (x2, y2) in zip(cont, resumed, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_batches_sharding_disjoint() -> None:
    d = ids_data(103)
    world = 4
    its = [D.Batches(d, 5, seed=2, rank=r, world_size=world, flip=True) for r in range(world)]
    assert len({len(it) for it in its}) == 1 and len(its[0]) == 5  # 25 examples per rank
    epochs = [[v for _, y in take(it, len(it)) for v in y.tolist()] for it in its]
    flat = sum(epochs, [])
    assert len(flat) == len(set(flat)) == 100
    single = D.Batches(d, 5, seed=2)
    order, _ = single.epoch_order(0)
    assert sorted(flat) == sorted(order[:100].tolist())
    assert epochs[1] == order[:100][1::world].tolist()
    with pytest.raises(ValueError):
        D.Batches(d, 5, rank=4, world_size=4)


# ------------------------------------------------------------------------------------------ registry


def test_registry_and_info() -> None:
    assert {"mnist", "fashion-mnist", "cifar10", "folder", "digits", "gaussian-blobs"} <= set(D.DATASETS)
    assert D.dataset_info("cifar10").flip and not D.dataset_info("mnist").flip
    assert D.dataset_info("MNIST").image_size == 32 and D.dataset_info("mnist").channels == 1
    assert D.dataset_info("cifar-10").channels == 3
    info = D.dataset_info("gaussian-blobs")
    assert not info.needs_files and info.num_classes == 10
    assert D.load("gaussian-blobs", n=10).image_size == info.image_size
    with pytest.raises(D.DataError, match="unknown dataset"):
        D.load("imagenet")
    with pytest.raises(D.DataError, match=r"data\.root") as err:
        D.load("folder")
    assert "--" not in str(err.value)


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.skipif(
    not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="shared MNIST not present"
)
def test_real_mnist_test_split() -> None:
    d = D.load("mnist", MNIST_DIR, split="test", image_size=28)
    assert d.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(d.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert d.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    with pytest.warns(UserWarning, match="test split"):
        tr = D.load("mnist", MNIST_DIR)  # train is requested; only t10k exists here
    assert tr.images.shape == (10000, 1, 32, 32) and torch.equal(tr.images[:, :, 2:30, 2:30], d.images)


@pytest.mark.skipif(not CIFAR_ZIP.is_file(), reason="shared CIFAR-10 zip not present")
def test_real_cifar10_zip_sample() -> None:
    d = D.load("cifar10", CIFAR_ZIP, split="test", max_per_class=30)
    assert d.images.shape == (300, 3, 32, 32) and d.class_names == D.CIFAR10_CLASSES
    assert torch.bincount(d.labels).tolist() == [30] * 10
    assert 60 < d.images.float().mean() < 200
    f = D.load("folder", CIFAR_ZIP, max_per_class=2)
    assert f.images.shape == (20, 3, 32, 32) and f.class_names == D.CIFAR10_CLASSES


@pytest.mark.skipif(
    not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist absent"
)
def test_real_fashion_mnist_default_location() -> None:
    d = D.load("fashion-mnist", split="test")
    assert d.images.shape == (10000, 1, 32, 32) and torch.bincount(d.labels).tolist() == [1000] * 10


def test_download_failure_is_one_line(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets as tvd

    def offline(self) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://…, got:\nno network")

    monkeypatch.setattr(tvd.MNIST, "download", offline)
    with pytest.raises(D.DataError, match="could not load/download") as err:
        D.load("mnist", tmp_path, download=True)
    assert "\n" not in str(err.value) and "no network" in str(err.value)


def test_pad_images_matches_the_padded_32px_layout():
    from ddpm.data import pad_images

    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    y = pad_images(x, 32)
    assert y.shape == (3, 1, 32, 32) and torch.equal(y[..., 2:30, 2:30], x)
    assert int(y.sum()) == int(x.sum())  # the border is background (0)
    assert pad_images(y, 32) is y or torch.equal(pad_images(y, 32), y)
    with pytest.raises(ValueError):
        pad_images(y, 28)
