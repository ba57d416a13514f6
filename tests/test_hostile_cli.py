"""Hostile inputs through the `ddpm` command and the data loaders: malicious or broken checkpoints, corrupt and odd
image files, path-traversal zips, and property-based fuzzing of `ddpm train` arguments and `--set` overrides.

The contract (DESIGN.md): every failure a user can cause ends in one line on stderr (``ddpm: error: …``) and a
non-zero exit — never a traceback, never an "internal error", and a failed start leaves no run directory.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import io
import json
import os
import pickle
import random
import re
import shutil
import struct
import tempfile
import types
import typing
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

import ddpm.checkpoint as ckpt_mod
import ddpm.data.folder as data_folder
from conftest import Payload, run_cli
from ddpm.checkpoint import latest_checkpoint, load_checkpoint
from ddpm.config import Config, preset_names
from ddpm.data import DataError, load_folder

# Hypothesis examples of `ddpm train --dry-run`, of real `ddpm train --max-steps 1|2` runs and of `ddpm sample`
# arguments (raise them through the environment for a longer local hunt, e.g. DDPM_FUZZ_DRY_RUNS=5000). The README's
# reliability table quotes their sum per test run.
FUZZ_DEFAULTS = {"DDPM_FUZZ_DRY_RUNS": 200, "DDPM_FUZZ_REAL_RUNS": 30, "DDPM_FUZZ_SAMPLE_RUNS": 100}
FUZZ_DRY_RUNS, FUZZ_REAL_RUNS, FUZZ_SAMPLE_RUNS = (
    int(os.environ.get(k, v)) for k, v in FUZZ_DEFAULTS.items()
)
# How many examples each fuzz test has run in this session (checked against the README at the end of the file).
FUZZ_EXAMPLES_RUN: collections.Counter[str] = collections.Counter()
TINY = ["--set", "data.limit=64", "--set", "train.threads=1", "--no-progress"]


run = run_cli  # conftest: in-process, one thread (a second makes tiny models ~20x slower on a loaded machine)


def assert_one_line_error(code: int, err: str, match: str | tuple[str, ...] = "") -> str:
    """A non-zero exit whose stderr ends in exactly one ``ddpm: error:`` line (warnings and progress may precede
    it), with no traceback and no internal error."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ddpm: error:")]
    assert code != 0, err
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err and "internal error" not in err, err
    assert any(m in errors[0] for m in ((match,) if isinstance(match, str) else match)), errors[0]
    return errors[0]


_Payload = Payload  # conftest


# --------------------------------------------------------------------------- checkpoints through the CLI
@pytest.fixture(scope="module")
def trained(tiny_run):
    return tiny_run


@pytest.fixture
def bad_run(trained, tmp_path):
    dst = tmp_path / "bad"
    shutil.copytree(trained, dst)
    return dst, latest_checkpoint(dst / "checkpoints")


def _break(kind: str, ck: Path, marker: Path) -> None:
    evil = pickle.dumps(_Payload(marker))
    if kind == "pickle as weights":
        (ck / "model.safetensors").write_bytes(evil)
        (ck / "ema.safetensors").write_bytes(evil)
    elif kind == "truncated weights":
        raw = (ck / "ema.safetensors").read_bytes()
        (ck / "ema.safetensors").write_bytes(raw[: len(raw) // 3])
    elif kind == "random weights":
        (ck / "ema.safetensors").write_bytes(random.Random(1).randbytes(2000))
    elif kind == "other architecture":
        cfg = json.loads((ck / "config.json").read_text())
        cfg["model"]["base_channels"] = 16
        (ck / "config.json").write_text(json.dumps(cfg))
    elif kind == "invalid config":
        (ck / "config.json").write_text(json.dumps({"model": {"warp_drive": 1}}))
    elif kind == "corrupt meta":
        (ck / "meta.json").write_text('{"step": "two", "format_version": 1}')
    elif kind == "future format":
        (ck / "meta.json").write_text('{"step": 2, "format_version": 1000}')
    elif kind == "no weights":
        (ck / "model.safetensors").unlink()
    elif kind == "malicious state":
        torch.save(_Payload(marker), ck / "state.pt")
    else:  # pragma: no cover
        raise AssertionError(kind)


LOAD_BREAKS = {
    "pickle as weights": "model.safetensors",
    "truncated weights": "ema.safetensors",
    "random weights": "ema.safetensors",
    "other architecture": "does not match the model architecture: ",
    "invalid config": "unknown config key model.warp_drive",
    "corrupt meta": "meta.json is corrupt",
    "future format": "newer than this ddpm",
    "no weights": ("no checkpoint found", "no such file or directory"),
}


@pytest.mark.parametrize("kind", sorted(LOAD_BREAKS))
def test_sample_from_a_broken_or_hostile_checkpoint_is_one_line(kind, bad_run, capsys, tmp_path):
    run_dir, ck = bad_run
    marker = tmp_path / "pwned"
    _break(kind, ck, marker)
    commands = [
        ["sample", "--run", str(run_dir), "--n", "1", "--steps", "1", "--no-progress"],
        ["sample", "--ckpt", str(ck / "model.safetensors"), "--n", "1", "--no-progress"],
    ]
    if kind != "other architecture":  # info reads the config, not the weights
        commands.append(["info", str(run_dir)])
    for argv in commands:
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, LOAD_BREAKS[kind])
    assert not marker.exists()


def test_malicious_training_state_is_refused_on_resume_only(bad_run, capsys, tmp_path):
    run_dir, ck = bad_run
    marker = tmp_path / "pwned"
    _break("malicious state", ck, marker)
    code, _, err = run(capsys, "train", "--out", str(run_dir), "--resume", "--max-steps", "4", *TINY)
    assert_one_line_error(code, err, "not a plain weights-only state file")
    assert not marker.exists()
    # sampling and info never read state.pt at all
    out = tmp_path / "s.npz"
    code, _, err = run(capsys, "sample", "--run", str(run_dir), "--n", "1", "--steps", "1", "--out", str(out))
    assert code == 0 and out.is_file(), err
    assert run(capsys, "info", str(run_dir))[0] == 0
    assert not marker.exists()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "diffusion_pytorch_model.bin", "ckpt.pth"])
def test_pickled_weight_files_are_never_loaded(name, capsys, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({"state_dict": _Payload(marker)}, evil / name)
    (evil / "config.json").write_text("{}")
    for argv in (
        ["sample", "--ckpt", str(evil / name), "--n", "1"],
        ["sample", "--run", str(evil), "--n", "1"],
    ):
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, "no checkpoint found")
    assert not marker.exists()


# --------------------------------------------------------------------------- numerical faults and full disk via the CLI
def test_too_many_nonfinite_steps_is_one_line_with_a_checkpoint(capsys, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--out", str(out), "--max-steps", "10", *TINY]
    code, _, err = run(capsys, *argv, "--set", "train.lr=1e30", "--set", "train.max_nonfinite=2")
    assert_one_line_error(code, err, "non-finite losses or gradients in a row")
    assert load_checkpoint(out).step == 1


def test_full_disk_is_reported_in_one_line(capsys, tmp_path, monkeypatch):
    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "save_file", enospc)
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--out", str(out), "--max-steps", "4", *TINY]
    code, _, err = run(capsys, *argv, "--set", "train.checkpoint_every=2")
    line = assert_one_line_error(code, err, "No space left on device")
    assert "newest complete checkpoint is none" in line
    assert "warning: cannot write checkpoint" in err  # the periodic one at step 2 was only a warning
    assert not [p for p in (out / "checkpoints").iterdir()]


# --------------------------------------------------------------------------- hostile image files
def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def raw_png(w: int, h: int, bitdepth: int, colortype: int, rows: list[bytes]) -> bytes:
    """A PNG written by hand (16-bit colour, or a header claiming any size)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, bitdepth, colortype, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\x00" + r for r in rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def image_of_mode(kind: str) -> bytes:
    g = np.full((16, 16), 200, np.uint8)
    if kind == "L":
        return png(g)
    if kind == "I;16":
        return png(np.full((16, 16), 32896, np.uint16))  # 16-bit gray: 32896 / 257 = 128
    if kind == "RGB16":
        rows = [np.full((16, 3), [0x1234, 0x5678, 0x9ABC], ">u2").tobytes() for _ in range(16)]
        return raw_png(16, 16, 16, 2, rows)
    if kind == "RGBA":
        return png(np.dstack([np.full((16, 16), v, np.uint8) for v in (10, 20, 30, 0)]))
    if kind == "LA":
        return _pil(Image.new("LA", (16, 16), (200, 0)))
    if kind == "P gray":
        return _pil(Image.new("L", (16, 16), 200).convert("P"))
    if kind == "P colour":
        return _pil(Image.new("RGB", (16, 16), (255, 0, 0)).convert("P"))
    if kind == "1":
        return _pil(Image.new("1", (16, 16), 1))
    if kind == "CMYK":
        return _pil(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "JPEG")
    if kind == "wide":
        return png(np.tile(np.arange(40, dtype=np.uint8) * 6, (20, 1)))
    if kind == "tiny":
        return png(np.full((3, 3), 200, np.uint8))
    raise AssertionError(kind)  # pragma: no cover


def _pil(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


MODES = {  # kind: (channels, pixel [0, 0] per channel, tolerance)
    "L": (1, [200], 0),
    "I;16": (1, [128], 0),
    "RGB16": (3, [0x12, 0x56, 0x9A], 0),
    "RGBA": (3, [10, 20, 30], 0),
    "LA": (1, [200], 0),
    "P gray": (1, [200], 0),
    "P colour": (3, [255, 0, 0], 0),
    "1": (1, [255], 0),
    "CMYK": (3, [255, 255, 255], 3),
    "wide": (1, None, 0),
    "tiny": (1, [200], 0),
}


@pytest.mark.parametrize("kind", sorted(MODES))
def test_images_of_any_mode_or_size_decode_correctly(kind, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    (d / f"x.{'jpg' if kind == 'CMYK' else 'png'}").write_bytes(image_of_mode(kind))
    data = load_folder(d, image_size=16)
    channels, pixel, tol = MODES[kind]
    assert tuple(data.images.shape) == (1, channels, 16, 16)
    if pixel is not None:
        got = data.images[0, :, 0, 0].int().tolist()
        assert all(abs(a - b) <= tol for a, b in zip(got, pixel, strict=True)), got


def _hostile_tree(root: Path) -> dict[str, bytes | None]:
    good = {f"a/good{i}.png": png(np.full((16, 16), 40 * i, np.uint8)) for i in range(5)}
    full = good["a/good1.png"]
    files: dict[str, bytes | None] = {
        **good,
        **{f"a/{k.replace(' ', '_')}.{'jpg' if k == 'CMYK' else 'png'}": image_of_mode(k) for k in MODES},
        "b/corrupt.png": random.Random(2).randbytes(300),
        "b/truncated.png": full[: len(full) // 2],
        "b/empty.png": b"",
        "b/bomb.png": raw_png(100_000, 100_000, 8, 0, []),  # 10^10 pixels: DecompressionBombError
        "b/bomb_warn.png": raw_png(10_000, 10_000, 8, 0, []),  # 10^8: PIL would only warn, then decode
        "b/notes.txt": b"hello",
        "b/labels.json": b"{}",
        "b/.hidden.png": b"junk",
    }
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    return files


def test_hostile_folder_skips_what_it_cannot_read_with_counts(tmp_path):
    _hostile_tree(tmp_path / "ds")
    (tmp_path / "ds" / "b" / "dir.png").mkdir()  # a directory with an image name
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "ds" / "b" / "fifo.png")  # reading it would block forever
    (tmp_path / "ds" / "a" / "loop").symlink_to(tmp_path / "ds")  # a symlink loop
    with pytest.warns(UserWarning) as rec:
        data = load_folder(tmp_path / "ds", image_size=16)
    msg = " ".join(str(w.message) for w in rec)
    assert "skipped 5 unreadable image file(s)" in msg and "2 non-image file(s)" in msg, msg
    assert tuple(data.images.shape) == (5 + len(MODES), 3, 16, 16)
    assert data.class_names == ["a"]


def _zip_with_traversal(path: Path, outside: Path) -> list[str]:
    good = png(np.full((16, 16), 99, np.uint8))
    unsafe = [
        "../evil.png",
        "../../evil.png",
        f"{outside}/abs_evil.png",
        "a/../../evil2.png",
        "C:/evil.png",
        "..\\evil3.png",
        "train/../../evil4.png",
    ]
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(20):
            zf.writestr(f"cls/ok{i}.png", good)
        for name in unsafe:
            zf.writestr(zipfile.ZipInfo(name), good)
        assert [n for n in zf.namelist() if not n.startswith("cls/")] == unsafe
    return unsafe


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_zip_traversal_entries_are_refused_and_nothing_is_written(tmp_path, capsys, monkeypatch):
    outside = Path(tempfile.mkdtemp(prefix="ddpm-outside-"))
    try:
        zpath = tmp_path / "ds.zip"
        unsafe = _zip_with_traversal(zpath, outside)
        work = tmp_path / "work" / "deeper"
        work.mkdir(parents=True)
        monkeypatch.chdir(work)
        before, before_outside = _tree(tmp_path), _tree(outside)
        with pytest.warns(UserWarning, match=rf"{len(unsafe)} unsafe zip entries"):
            data = load_folder(zpath, image_size=16)
        assert len(data) == 20 and data.class_names == ["cls"]
        assert _tree(tmp_path) == before and _tree(outside) == before_outside
        # through the command: a real run on the zip writes only inside --out
        out = tmp_path / "out"
        argv = ["train", "--preset", "tiny", "--set", "data.name=folder", "--data-root", str(zpath)]
        with pytest.warns(
            UserWarning, match="unsafe zip entries"
        ):  # pytest records it, the CLI would print it
            code, _, err = run(
                capsys, *argv, "--out", str(out), "--max-steps", "1", "--set", "train.batch_size=4", *TINY
            )
        assert code == 0, err
        assert {p for p in _tree(tmp_path) - before if not p.startswith("out")} == set()
        assert _tree(outside) == before_outside
        planted = {"evil.png", "evil2.png", "evil3.png", "evil4.png", "abs_evil.png", "..\\evil3.png"}
        assert not any(Path(p).name in planted for p in _tree(tmp_path.parent))
    finally:
        shutil.rmtree(outside)


def test_zip_bomb_members_are_not_inflated(tmp_path, monkeypatch):
    zpath = tmp_path / "bomb.zip"
    good = png(np.full((16, 16), 7, np.uint8))
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("c/ok.png", good)
        zf.writestr("c/bomb.png", good + b"\0" * (8 << 20))  # 8 MiB inflated, a few KiB stored
    assert zpath.stat().st_size < 64 << 10
    monkeypatch.setattr(data_folder, "MAX_IMAGE_FILE_BYTES", 1 << 20)
    reads = []
    real_read = zipfile.ZipFile.read
    monkeypatch.setattr(
        zipfile.ZipFile, "read", lambda self, name, *a: reads.append(name) or real_read(self, name, *a)
    )
    with pytest.warns(UserWarning, match=r"1 unreadable image.*bomb\.png.*over the 1 MiB limit"):
        data = load_folder(zpath, image_size=16)
    assert len(data) == 1 and [getattr(r, "filename", r) for r in reads] == ["c/ok.png"]


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("empty dir", "no readable images"),
        ("only junk", "no readable images"),
        ("empty zip", "no readable images"),
        ("zip of unsafe entries", "no readable images"),
        ("not a zip", "not a readable zip file"),
        ("missing", "does not exist"),
        ("no train split", "none named 'train'"),
    ],
)
def test_unusable_datasets_are_one_clear_error(layout, expected, tmp_path, capsys):
    root = tmp_path / ("ds.zip" if "zip" in layout else "ds")
    if layout == "empty dir":
        root.mkdir()
    elif layout == "only junk":
        root.mkdir()
        (root / "a.txt").write_text("x")
        (root / "b.png").write_bytes(b"not a png")
    elif layout == "empty zip":
        zipfile.ZipFile(root, "w").close()
    elif layout == "zip of unsafe entries":
        with zipfile.ZipFile(root, "w") as zf:
            zf.writestr(zipfile.ZipInfo("../x.png"), png(np.zeros((4, 4), np.uint8)))
    elif layout == "not a zip":
        root.write_bytes(random.Random(3).randbytes(500))
    elif layout == "no train split":
        (root / "test" / "a").mkdir(parents=True)
        (root / "test" / "a" / "x.png").write_bytes(png(np.zeros((4, 4), np.uint8)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=expected):
            load_folder(root, image_size=16)
    out = tmp_path / "never"
    code, _, err = run(
        capsys,
        "train",
        "--preset",
        "tiny",
        "--set",
        "data.name=folder",
        "--data-root",
        str(root),
        "--out",
        str(out),
    )
    assert_one_line_error(code, err, expected)
    assert not out.exists()


def test_malicious_cifar_batch_pickle_is_refused(tmp_path, capsys):
    """A foreign cifar-10-batches-py (not matching the published MD5s) is read with a numpy-only unpickler."""
    marker = tmp_path / "pwned"
    batches = tmp_path / "c" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ]:
        (batches / name).write_bytes(pickle.dumps({"data": _Payload(marker), "labels": [0]}))
    (batches / "batches.meta").write_bytes(pickle.dumps({"label_names": _Payload(marker)}))
    out = tmp_path / "never"
    code, _, err = run(
        capsys,
        "train",
        "--preset",
        "tiny",
        "--set",
        "data.name=cifar10",
        "--data-root",
        str(tmp_path / "c"),
        "--out",
        str(out),
    )
    assert_one_line_error(code, err, "refusing to load")
    assert not marker.exists() and not out.exists()


# --------------------------------------------------------------------------- property-based: hostile configuration
def _fields() -> dict[str, typing.Any]:
    """Every ``section.key`` of the config and its type."""
    out = {}
    for f in dataclasses.fields(Config):
        sect = typing.get_type_hints(Config)[f.name]
        if dataclasses.is_dataclass(sect):
            for name, tp in typing.get_type_hints(sect).items():
                out[f"{f.name}.{name}"] = tp
        else:
            out[f.name] = sect
    return out


FIELDS = _fields()
# `--dry-run` builds the network on the meta device, so model sizes may be absurd there; the noise schedule is real,
# so diffusion.timesteps stays below what would allocate gigabytes (that case is reported, not fuzzed).
WEIRD_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=10)


def _value(key: str, tp: typing.Any) -> st.SearchStrategy[str]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    junk = st.sampled_from(
        ["", "none", "null", "nan", "inf", "-inf", "1e309", "true", "[]", "1,2", "0x10", "½"]
    )
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return st.one_of(st.just("none"), *(_value(key, a) for a in inner))
    if origin is typing.Literal:
        return st.one_of(st.sampled_from([str(a) for a in args]), WEIRD_TEXT)
    if origin is tuple:
        items = st.lists(st.one_of(st.integers(-2, 40), st.integers(41, 10**4)), max_size=5)
        return st.one_of(items.map(lambda v: ",".join(map(str, v))), items.map(str), junk)
    if tp is bool:
        return st.sampled_from(["true", "false", "yes", "no", "1", "0", "on", "maybe", "TRUE", ""])
    if tp is int:
        if key.startswith("model.") or key == "data.image_size":
            ints = st.one_of(st.integers(-3, 40), st.integers(41, 10**6))
        elif key == "diffusion.timesteps":
            ints = st.integers(-3, 3000)
        else:
            ints = st.one_of(st.integers(-5, 100), st.integers(-(2**70), 2**70))
        return st.one_of(ints.map(str), ints.map(lambda v: f"{v}.0"), junk)
    if tp is float:
        floats = st.floats(allow_nan=True, allow_infinity=True)
        return st.one_of(floats.map(repr), st.floats(-2, 2).map(str), junk)
    return st.one_of(WEIRD_TEXT, junk)


def _override() -> st.SearchStrategy[str]:
    known = st.sampled_from(sorted(FIELDS)).flatmap(lambda k: st.tuples(st.just(k), _value(k, FIELDS[k])))
    known = known.map(lambda kv: f"{kv[0]}={kv[1]}")
    unknown = st.one_of(
        WEIRD_TEXT,  # often no "=" at all
        st.builds(lambda k, v: f"{k}={v}", WEIRD_TEXT, WEIRD_TEXT),
        st.sampled_from(
            ["model=1", "train=", "train.lr.x=1", "=", "==", ".=", "train..lr=1", " train.lr = 1"]
        ),
    )
    return st.one_of(known, known, known, unknown)


def _argv(real: bool) -> st.SearchStrategy[list[str]]:
    presets = (
        st.sampled_from(["tiny"] * 6 + ["demo", "mnist-cpu", "nope", ""]) if not real else st.just("tiny")
    )
    opt_int = st.one_of(st.integers(-3, 2**40).map(str), WEIRD_TEXT)
    opt_float = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), WEIRD_TEXT)
    flags = st.lists(
        st.one_of(
            opt_int.map(lambda v: ["--max-steps", v]),
            opt_float.map(lambda v: ["--max-minutes", v]),
            WEIRD_TEXT.map(lambda v: ["--data-root", v]),
            st.just(["--resume"]),
            st.just(["--bogus"]),
            st.just(["--debug-not"]),
        ),
        max_size=2,
    )
    sets = st.lists(_override(), max_size=4 if not real else 3)
    return st.tuples(presets, flags, sets).map(
        lambda t: [
            *(["--preset", t[0]] if t[0] else []),
            *[a for f in t[1] for a in f],
            *[a for s in t[2] for a in ("--set", s)],
        ]
    )


_counter = iter(range(10**9))


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@settings(
    max_examples=FUZZ_DRY_RUNS,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(args=_argv(real=False))
def test_fuzz_train_dry_run_works_or_fails_in_one_line(args, capsys, fuzz_root):
    FUZZ_EXAMPLES_RUN["DDPM_FUZZ_DRY_RUNS"] += 1
    out = fuzz_root / f"dry{next(_counter)}"
    code, stdout, err = run(capsys, "train", "--dry-run", "--out", str(out), *args)
    event(f"exit {code}")
    if code == 0:
        assert stdout.strip().splitlines()[-1].startswith("parameters: "), stdout
        assert all(ln.startswith("ddpm: warning:") for ln in err.splitlines() if ln.strip()), err
    else:
        assert_one_line_error(code, err)
        assert code in (1, 2)
    assert not out.exists()


CHEAP_KEYS = sorted(
    k
    for k in FIELDS
    if k.startswith(("train.", "diffusion.", "sample.", "data."))
    and k
    not in {
        "train.compile",  # compiling takes a minute; tested nowhere near a fuzz loop
        "train.max_steps",
        "train.epochs",
        "train.max_minutes",
        "data.download",
        "data.root",
        "data.name",
        "data.split",
        "train.device",
        "data.limit",
        "train.threads",
    }
)


def _real_value(key: str) -> st.SearchStrategy[str]:
    if key in ("train.batch_size", "train.sample_n", "train.val_batches"):
        return st.integers(-2, 24).map(str)
    if key in ("train.grad_accum",):
        return st.integers(-1, 5).map(str)
    if key == "diffusion.timesteps":
        return st.integers(-2, 300).map(str)
    if key in ("train.sample_every", "train.checkpoint_every", "train.val_every", "train.log_every"):
        return st.sampled_from(["none", "-1", "0", "1", "2"])
    if key == "sample.steps":
        return st.sampled_from(["none", "-1", "0", "1", "2", "5"])
    if key == "data.image_size":
        return st.sampled_from(["none", "0", "-4", "1", "8", "12", "16"])
    return _value(key, FIELDS[key])


@settings(
    max_examples=FUZZ_REAL_RUNS,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    sets=st.lists(
        st.sampled_from(CHEAP_KEYS).flatmap(lambda k: st.tuples(st.just(k), _real_value(k))), max_size=3
    ),
    steps=st.sampled_from(["1", "2"]),
)
def test_fuzz_real_short_runs_work_or_fail_in_one_line_without_a_run_dir(sets, steps, capsys, fuzz_root):
    FUZZ_EXAMPLES_RUN["DDPM_FUZZ_REAL_RUNS"] += 1
    out = fuzz_root / f"real{next(_counter)}"
    argv = ["train", "--preset", "tiny", "--out", str(out), "--max-steps", steps, *TINY]
    code, stdout, err = run(capsys, *argv, *[a for k, v in sets for a in ("--set", f"{k}={v}")])
    event(f"exit {code}" + (" after training started" if "training " in err else ""))
    if code == 0:
        reported = re.match(r"stopped at step (\d+) ", stdout.strip().splitlines()[-1])
        assert reported, (stdout, err)
        assert 1 <= int(reported[1]) == load_checkpoint(out).step <= int(steps)
    else:
        assert_one_line_error(code, err)
        if not any(ln.startswith("training ") for ln in err.splitlines()):
            assert not out.exists(), err  # a failed start leaves nothing behind
        elif latest_checkpoint(out / "checkpoints") is not None:
            load_checkpoint(
                out
            )  # a run that failed later (e.g. non-finite losses) left a loadable checkpoint
    shutil.rmtree(out, ignore_errors=True)


def _flag(name: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, str]]:
    return st.tuples(st.just(name), st.one_of(values, WEIRD_TEXT))


FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.floats(-3, 3).map(str))
SAMPLE_FLAGS = st.one_of(
    _flag("--n", st.integers(-2, 3).map(str)),
    _flag("--steps", st.one_of(st.integers(-2, 4).map(str), st.sampled_from(["all", "none", "1.5"]))),
    _flag("--method", st.sampled_from(["ddpm", "ddim", "dpmpp_2m", "DDIM"])),
    _flag("--eta", FLOATS),
    _flag("--seed", st.one_of(st.integers(-5, 5), st.integers(-(2**70), 2**70)).map(str)),
    _flag("--batch-size", st.integers(-2, 4).map(str)),
    _flag("--class", st.sampled_from(["0", "3", "all", "-1", "10"])),
    _flag("--guidance", FLOATS),
    _flag("--precision", st.sampled_from(["auto", "fp32", "bf16", "fp16"])),
    _flag("--spacing", st.sampled_from(["linspace", "leading", "trailing", "quadratic", "logsnr", "karras"])),
    _flag("--device", st.sampled_from(["auto", "cpu", "cuda", "cuda:3", "meta", "xpu", "mps"])),
    st.tuples(
        st.just("--out"), st.sampled_from(["s.npz", "s.png", "dir", "s.jpg", "a/b/s.npz", "s.NPZ", ""])
    ),
    st.tuples(st.sampled_from(["--no-ema", "--no-progress", "--bogus"]), st.just("")),
)


@settings(
    max_examples=FUZZ_SAMPLE_RUNS,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(flags=st.lists(SAMPLE_FLAGS, max_size=4))
def test_fuzz_sample_arguments_work_or_fail_in_one_line(flags, trained, capsys, fuzz_root):
    FUZZ_EXAMPLES_RUN["DDPM_FUZZ_SAMPLE_RUNS"] += 1
    where = fuzz_root / f"sample{next(_counter)}"
    where.mkdir()
    argv = ["sample", "--run", str(trained), "--n", "2", "--steps", "2", "--out", str(where / "default.npz")]
    for name, value in flags:
        argv += [name] if name in ("--no-ema", "--no-progress", "--bogus") else [name, value]
        if name == "--out":
            argv[-1] = str(where / value)
    code, stdout, err = run(capsys, *argv)
    event(f"exit {code}")
    if code == 0:
        assert stdout.startswith("wrote "), (stdout, err)
    else:
        assert_one_line_error(code, err)


# Found by the fuzzing above (each was an "internal error" or a crash after the run directory was created).
FOUND = {
    "grad_accum=0": (["--set", "train.grad_accum=0"], "train.grad_accum must be at least 1"),
    "log_every=0": (["--set", "train.log_every=0"], "train.log_every must be at least 1"),
    "sample_n=0": (
        ["--set", "train.sample_every=1", "--set", "train.sample_n=0"],
        "train.sample_n must be at least 1",
    ),
    "threads=-1": (["--set", "train.threads=-1"], "train.threads must be auto or at least 1"),
    "limit=-5": (["--set", "data.limit=-5"], "data.limit must be at least 1"),
    "device=xpu:9": (["--set", "train.device=xpu:9"], "'xpu:9' is not supported"),
    "ema_decay=2": (["--set", "train.ema_decay=2"], "train.ema_decay must be in [0, 1]"),
    "val_fraction<0": (["--set", "data.val_fraction=-0.5"], "data.val_fraction must be in [0, 1)"),
    "seed=2**70": (["--set", f"train.seed={2**70}"], "train.seed must be in [0, 2**62)"),
}


@pytest.mark.parametrize("case", sorted(FOUND))
def test_found_by_fuzzing_are_one_line_before_anything_is_written(case, capsys, tmp_path):
    extra, expected = FOUND[case]
    out = tmp_path / "never"
    code, _, err = run(
        capsys, "train", "--preset", "tiny", "--out", str(out), "--max-steps", "1", *TINY, *extra
    )
    assert_one_line_error(code, err, expected)
    assert not out.exists()


def test_compiled_model_is_used_without_truth_testing(tmp_path, monkeypatch):
    """``train.compile=true`` crashed on every run: ``compiled or model`` asked a compiled module for len()."""
    from ddpm.config import apply_overrides, get_preset
    from ddpm.train import Trainer

    class Compiled:  # like torch._dynamo's OptimizedModule around a UNet: no len(), so no bool()
        def __init__(self, model):
            self.model = model

        def __len__(self):
            raise TypeError("UNet does not support len()")

        def __call__(self, *a, **k):
            return self.model(*a, **k)

    monkeypatch.setattr(torch, "compile", Compiled)
    n = torch.get_num_threads()
    cfg = apply_overrides(get_preset("tiny"), ["data.limit=64", "train.threads=1", "train.compile=true"])
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    torch.set_num_threads(n)
    assert isinstance(tr._model_fn(), Compiled)
    assert tr.train_step() is not None


def test_resume_with_a_json_bomb_config_is_one_line(capsys, tmp_path):
    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = run(capsys, "train", "--out", str(tmp_path), "--resume")
    assert_one_line_error(code, err, "config.json")


def test_json_bomb_in_a_checkpoint_is_one_line(bad_run, capsys):
    run_dir, ck = bad_run
    (ck / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = run(capsys, "sample", "--run", str(run_dir), "--n", "1")
    assert_one_line_error(code, err, "config.json")


def test_dry_run_refuses_what_a_real_run_refuses(capsys):
    code, _, err = run(capsys, "train", "--preset", "tiny", "--dry-run", "--set", "train.grad_accum=0")
    assert_one_line_error(code, err, "train.grad_accum must be at least 1")


def test_fuzz_figures_are_what_the_readme_quotes():
    """The reliability table's fuzzing row: its per-run count is the sum of this file's defaults, and when the
    fuzz tests above ran in this session (they come first in the file), each ran at least its share."""
    root = Path(__file__).resolve().parents[1]
    lines = (root / "README.md").read_text(encoding="utf-8").splitlines()
    table = next(i for i, ln in enumerate(lines) if ln.startswith("| what was tried ("))
    for name in ("tests/test_reliability.py", "tests/test_hostile_cli.py"):
        assert name in lines[table] and (root / name).is_file()
    row = next(ln for ln in lines[table:] if ln.startswith("| property-based CLI fuzzing (hypothesis)"))
    what, count, failures = (c.strip() for c in row.strip().strip("|").split("|"))
    assert what.endswith("per test run; one longer run"), what
    per_run, longer = (int(v.strip().replace(",", "")) for v in count.split(";"))
    assert per_run == sum(FUZZ_DEFAULTS.values()), (count, FUZZ_DEFAULTS)
    assert longer > per_run
    assert failures == "0 tracebacks, 0 partial run directories"
    for key, default in FUZZ_DEFAULTS.items():
        if FUZZ_EXAMPLES_RUN[key] and key not in os.environ:  # that fuzz test ran here, with the quoted count
            assert FUZZ_EXAMPLES_RUN[key] >= default, (key, FUZZ_EXAMPLES_RUN[key])
    assert FUZZ_DRY_RUNS >= 100 and FUZZ_REAL_RUNS >= 10
    assert {"train.lr", "model.channel_mult", "diffusion.timesteps", "data.image_size"} <= set(FIELDS)
    assert "tiny" in preset_names()
