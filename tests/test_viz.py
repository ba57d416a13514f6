"""Figures of ddpm.viz: pixel-exact grids and strips, GIF frame counts, figure layouts, tables."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm
from ddpm import viz

PAD = 2


def _open(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _tile_centre(row: int, col: int, h: int, w: int, pad: int = PAD) -> tuple[int, int]:
    """(y, x) of the centre pixel of tile (row, col) in a make_grid layout."""
    return pad + row * (h + pad) + h // 2, pad + col * (w + pad) + w // 2


def _value_to_byte(v: float) -> int:
    return int(math.floor((min(max(v, -1.0), 1.0) + 1) / 2 * 255 + 0.5))


def test_save_grid_maps_minus_one_to_0_and_one_to_255(tmp_path):
    x = torch.stack([torch.full((1, 4, 4), -1.0), torch.full((1, 4, 4), 1.0), torch.full((1, 4, 4), 0.0)])
    a = _open(viz.save_grid(x, tmp_path / "g.png", nrow=3))
    assert a.shape == (1 * (4 + PAD) + PAD, 3 * (4 + PAD) + PAD, 3)
    assert (a[_tile_centre(0, 0, 4, 4)] == 0).all()
    assert (a[_tile_centre(0, 1, 4, 4)] == 255).all()
    assert (a[_tile_centre(0, 2, 4, 4)] == 128).all()  # 0 → 127.5 → round half up
    assert (a[0, 0] == 255).all()  # white padding
    # out-of-range values clamp; uint8 images pass through unchanged
    b = _open(
        viz.save_grid(torch.tensor([-3.0, 2.0]).view(2, 1, 1, 1), tmp_path / "c.png", nrow=2, padding=0)
    )
    assert b[0, :, 0].tolist() == [0, 255]
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    c = _open(viz.save_grid(u, tmp_path / "u.png", padding=0))
    assert c[..., 0].ravel().tolist() == list(range(256))


def _frames(timesteps, n=3, c=1, h=8, w=8):
    """Frame t holds a constant that identifies its column; the first column is noisy (beyond [-1, 1])."""
    vals = {t: (-0.9 + 1.6 * i / max(1, len(timesteps) - 1)) for i, t in enumerate(timesteps)}
    frames = {t: torch.full((n, c, h, w), v) for t, v in vals.items()}
    frames[timesteps[0]] = frames[timesteps[0]] * 5  # -4.5: clamped to 0
    vals[timesteps[0]] = -4.5
    return frames, vals


def test_denoising_strip_has_one_column_per_timestep_plus_final(tmp_path):
    ts = viz.DENOISING_TIMESTEPS
    n, h, w = 3, 8, 6
    frames, vals = _frames(ts, n=n, h=h, w=w)
    final = torch.full((n, 1, h, w), 1.0)
    a = _open(viz.denoising_strip(frames, final, tmp_path / "s.png", timesteps=ts))
    cols = len(ts) + 1
    assert a.shape[:2] == (n * (h + PAD) + PAD, cols * (w + PAD) + PAD)
    for r in range(n):
        for j, t in enumerate(ts):
            assert a[_tile_centre(r, j, h, w)][0] == _value_to_byte(vals[t]), (r, t)
        assert a[_tile_centre(r, cols - 1, h, w)][0] == 255
    assert a[_tile_centre(0, 0, h, w)][0] == 0  # the noisy frame is clamped

    # n keeps the first rows; timesteps pick and order the columns
    b = _open(viz.denoising_strip(frames, final, tmp_path / "s2.png", timesteps=(0, 999), n=1))
    assert b.shape[:2] == (h + 2 * PAD, 3 * (w + PAD) + PAD)
    assert b[_tile_centre(0, 0, h, w)][0] == _value_to_byte(vals[0])
    with pytest.raises(ValueError, match="no frame"):
        viz.denoising_strip(frames, final, tmp_path / "x.png", timesteps=(999, 123))
    with pytest.raises(ValueError, match="shape"):
        viz.denoising_strip(frames, final[:2], tmp_path / "x.png", timesteps=ts)


def test_denoising_strip_from_a_real_sampler(tmp_path):
    diffusion = ddpm.GaussianDiffusion(ddpm.NoiseSchedule.linear(1000))
    ts = (999, 500, 0)

    def model(x, t):
        return torch.zeros_like(x)

    x, frames = ddpm.sample(
        model,
        diffusion,
        (2, 3, 8, 8),
        "ddim",
        10,
        generator=torch.Generator().manual_seed(0),
        intermediates=ts,
    )
    assert set(frames) == set(ts)
    a = _open(viz.denoising_strip(frames, x, tmp_path / "s.png", timesteps=ts))
    assert a.shape == (2 * (8 + PAD) + PAD, 4 * (8 + PAD) + PAD, 3)


def test_denoising_gif_frame_count_size_and_mode(tmp_path):
    seq = [torch.full((4, 1, 5, 5), -1.0 + 0.5 * k) for k in range(5)]
    path = viz.denoising_gif(seq, tmp_path / "a.gif", duration_ms=50, hold_last_ms=500)
    with Image.open(path) as im:
        assert im.format == "GIF"
        assert im.n_frames == 5
        assert im.size == (2 * (5 + PAD) + PAD, 2 * (5 + PAD) + PAD)  # nrow = ceil(sqrt(4)) = 2
        durations = []
        for k in range(im.n_frames):
            im.seek(k)
            durations.append(im.info["duration"])
            g = np.asarray(im.convert("L"))
            y, x = _tile_centre(1, 1, 5, 5)
            assert g[y, x] == _value_to_byte(-1.0 + 0.5 * k)
        assert durations == [50, 50, 50, 50, 550]
    # a {t: x_t} mapping plays from noise (large t) to t = 0, in colour
    rgb = {t: torch.full((2, 3, 4, 4), v) for t, v in ((0, 1.0), (999, -1.0), (500, 0.0))}
    with Image.open(viz.denoising_gif(rgb, tmp_path / "b.gif")) as im:
        assert im.n_frames == 3
        first = np.asarray(im.convert("RGB"))[_tile_centre(0, 0, 4, 4)]
        assert first.tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        viz.denoising_gif([seq[0], torch.zeros(4, 1, 6, 6)], tmp_path / "c.gif")


def test_real_vs_generated_puts_real_left_and_generated_right(tmp_path):
    real = torch.ones(40, 1, 8, 8)  # white
    fake = -torch.ones(40, 3, 8, 8)  # black, RGB beside grayscale
    dpi = 40
    a = _open(viz.real_vs_generated(real, fake, tmp_path / "rv.png", n=16, dpi=dpi))
    # square 4×4 grids: (2·4 + 1) in × (4 + 0.75) in
    assert a.shape[:2] == (int(4.75 * dpi), 9 * dpi)
    h, w = a.shape[:2]
    dark = a[int(0.3 * h) : int(0.9 * h)].max(axis=2) < 50
    assert not dark[:, : w // 2].any()  # the white real panel is on the left
    assert dark[:, w // 2 :].mean() > 0.3  # the black generated panel on the right
    top = a[: int(0.08 * h)]
    assert (top < 128).any()  # the titles


def test_plot_alpha_bar_one_or_two_panels(tmp_path):
    sch = {"linear": ddpm.NoiseSchedule.linear(1000), "cosine": ddpm.NoiseSchedule.cosine(1000)}
    two = _open(viz.plot_alpha_bar(sch, tmp_path / "ab.png", dpi=40))
    one = _open(viz.plot_alpha_bar(sch, tmp_path / "ab1.png", second=None, dpi=40))
    assert two.shape[:2] == (round(3.5 * 40), 10 * 40)
    assert one.shape[:2] == (round(3.5 * 40), 5 * 40)
    for a in (one, two):  # coloured curves drawn (C0 blue, C1 orange)
        r, g, b = (a[..., i].astype(int) for i in range(3))
        assert ((b - r) > 100).sum() > 50 and ((r - b) > 100).sum() > 50
    with pytest.raises(ValueError):
        viz.plot_alpha_bar(sch, tmp_path / "x.png", second="snr2")


def test_class_grid_has_one_row_per_class(tmp_path):
    k, classes, h, w = 4, 3, 6, 5
    x = torch.cat([torch.full((k, 1, h, w), -1.0 + c) for c in range(classes)])  # class c → value c-1
    a = _open(viz.class_grid(x, classes, tmp_path / "c.png"))
    assert a.shape[:2] == (classes * (h + PAD) + PAD, k * (w + PAD) + PAD)
    for c in range(classes):
        for j in range(k):
            assert a[_tile_centre(c, j, h, w)][0] == _value_to_byte(-1.0 + c)
    with pytest.raises(ValueError, match="class rows"):
        viz.class_grid(x[:-1], classes, tmp_path / "x.png")


ROWS = [
    {"step": 1000, "fid": 80.5, "kid": 0.05, "confidence": 0.41, "val_loss": 0.061},
    {"step": 2000, "fid": 40.25, "kid": 0.02, "val_loss": 0.052},
    {"step": 4000, "fid": 21.0, "kid": None, "confidence": 0.88, "val_loss": float("nan")},
]


def test_plot_metric_table_panels(tmp_path):
    keys = ["fid", "kid", "confidence", "val_loss"]
    a = _open(viz.plot_metric_table(ROWS, "step", keys, tmp_path / "m.png", log_y=["fid"], dpi=40))
    assert a.shape[:2] == (round(2.75 * 40), 4 * 3 * 40)
    b = _open(viz.plot_metric_table(ROWS, "step", keys, tmp_path / "m2.png", ncols=2, title="study", dpi=40))
    assert b.shape[:2] == (round((2 * 2.75 + 0.4) * 40), 2 * 3 * 40)
    c = _open(viz.plot_metric_table([], "step", ["fid"], tmp_path / "m3.png", dpi=40))  # "no data"
    assert c.shape[:2] == (round(2.75 * 40), 3 * 40)
    with pytest.raises(ValueError):
        viz.plot_metric_table(ROWS, "step", [], tmp_path / "x.png")


def test_markdown_table_rows():
    md = viz.markdown_table(ROWS, ["step", "fid", "kid", "confidence"])
    lines = md.splitlines()
    assert md.endswith("\n") and len(lines) == 2 + len(ROWS)
    assert lines[0] == "| step | fid | kid | confidence |"
    assert lines[1] == "|---|---|---|---|"
    assert lines[2] == "| 1000 | 80.5 | 0.05 | 0.41 |"
    assert lines[3] == "| 2000 | 40.25 | 0.02 |  |"  # missing key → empty cell
    assert lines[4] == "| 4000 | 21 |  | 0.88 |"  # None → empty cell
    assert (
        viz.markdown_table([{"a": "x|y", "b": torch.tensor(0.5)}], ["a", "b"]).splitlines()[2]
        == r"| x\|y | 0.5 |"
    )


def test_csv_table_rows_round_trip():
    text = viz.csv_table(ROWS, ["step", "fid", "kid", "val_loss"])
    back = list(csv.DictReader(io.StringIO(text)))
    assert len(back) == len(ROWS) and text.count("\n") == 1 + len(ROWS)
    assert back[0] == {"step": "1000", "fid": "80.5", "kid": "0.05", "val_loss": "0.061"}
    assert back[1]["fid"] == "40.25"
    assert back[2]["kid"] == "" and back[2]["val_loss"] == "nan"
    assert float(viz.csv_table([{"x": 1 / 3}], ["x"]).splitlines()[1]) == 1 / 3  # full precision
    assert viz.csv_table([{"s": 'a,"b'}], ["s"]).splitlines()[1] == '"a,""b"'


def test_plot_losses_still_writes_a_png(tmp_path):
    recs = [{"step": i, "loss": 1.0 / (i + 1)} for i in range(50)] + [{"step": 49, "val_loss": 0.05}]
    a = _open(viz.plot_losses(recs, tmp_path / "l.png"))
    assert a.shape[:2] == (4 * 120, 7 * 120)
    assert viz.loss_stats(recs)["n"] == 50
