"""Figures: sample grids, forward and denoising strips, GIFs, real-vs-generated panels, schedule plots,
class grids, loss curves, metric plots and the tables of a report.

Images are float tensors [N, C, H, W] in model space ([-1, 1]; values beyond are clamped) or uint8
[N, C, H, W] in [0, 255]; C is 1 (grayscale) or 3. Pixel grids are written exactly (-1 → 0, 1 → 255, uint8
unchanged) with torchvision's ``make_grid`` layout: ``cols·(W+p)+p`` pixels wide and ``rows·(H+p)+p`` high for
padding p, pad colour white. Plots use matplotlib's Agg canvas on a bare ``Figure`` (no pyplot state is touched).

Longer than ~400 lines on purpose: many small, independent drawing functions over one matplotlib set-up.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from . import runlog

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .schedule import NoiseSchedule

__all__ = [
    "grid_array",
    "save_grid",
    "forward_strip",
    "denoising_strip",
    "denoising_gif",
    "real_vs_generated",
    "plot_alpha_bar",
    "class_grid",
    "plot_losses",
    "plot_metric_table",
    "markdown_table",
    "csv_table",
    "read_metrics",
    "loss_stats",
    "loss_stats_markdown",
]

DENOISING_TIMESTEPS: tuple[int, ...] = (999, 750, 500, 250, 100, 50, 0)


# --------------------------------------------------------------------------------------------- pixels
def _to_unit(x: Tensor) -> Tensor:
    """[-1, 1] float → [0, 1] float on the CPU (uint8 → [0, 1]); values outside [-1, 1] are clamped."""
    if x.dtype == torch.uint8:
        return x.detach().cpu().float() / 255.0
    return ((x.detach().float().clamp(-1, 1) + 1) / 2).cpu()


def _check_images(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a non-empty image batch [N, C, H, W] with C in (1, 3), got {shape}")


def _grid_uint8(x: Tensor, nrow: int, padding: int = 2) -> Tensor:
    """Images x [N, C, H, W] → one uint8 grid [C, rows·(H+p)+p, nrow·(W+p)+p] (white padding), C kept (1 or 3).

    The quantisation is ``save_image``'s (×255, +0.5, floor), so -1 → 0 and 1 → 255 exactly.
    """
    from torchvision.utils import make_grid

    _check_images(x)
    g = make_grid(_to_unit(x), nrow=nrow, padding=padding, pad_value=1.0)  # make_grid repeats C=1 to 3
    if x.shape[1] == 1:
        g = g[:1]
    return g.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def _to_pil(grid: Tensor) -> Any:
    """uint8 grid [C, H, W] → PIL image ("L" for C=1, "RGB" for C=3)."""
    from PIL import Image

    arr = grid.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr, mode="RGB")


def _prepare(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save_unit_grid(unit: Tensor, path: str | Path, nrow: int, padding: int) -> Path:
    """Write images already in [0, 1] (float [N, C, H, W]) as a grid PNG with white padding."""
    from torchvision.utils import save_image

    path = _prepare(path)
    save_image(unit, path, nrow=nrow, padding=padding, pad_value=1.0)
    return path


def grid_array(x: Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Images x [N, C, H, W] (float in [-1, 1] or uint8) as one uint8 grid array, [H', W'] for one channel and
    [H', W', 3] for three (what image widgets take); ``nrow`` (images per row) defaults to ⌈√N⌉."""
    nrow = nrow or max(1, math.ceil(math.sqrt(x.shape[0])))
    g = _grid_uint8(x, nrow, padding)
    return (g[0] if g.shape[0] == 1 else g.permute(1, 2, 0)).contiguous().numpy()


def save_grid(x: Tensor, path: str | Path, nrow: int | None = None, padding: int = 2) -> Path:
    """Save images x [N, C, H, W] (float in [-1, 1] or uint8) as one grid PNG; ``nrow`` defaults to ⌈√N⌉.

    ``nrow`` is the number of images per row (columns); the PNG is RGB, ``ncol·(W+p)+p`` × ``rows·(H+p)+p``.
    """
    nrow = nrow or max(1, math.ceil(math.sqrt(x.shape[0])))
    return _save_unit_grid(_to_unit(x), path, nrow, padding)


def forward_strip(
    x0: Tensor,
    diffusion: Any,
    path: str | Path,
    timesteps: Sequence[int] = (0, 50, 100, 250, 500, 750, 999),
    seed: int = 0,
) -> Path:
    """The forward process q(x_t | x₀) for a few images x0 [N, C, H, W] at ``timesteps``: one row per image."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g)
    ts = [t for t in timesteps if t < diffusion.num_timesteps]
    cols = [diffusion.q_sample(x0, torch.full((x0.shape[0],), t), noise) for t in ts]
    grid = torch.stack(cols, dim=1).reshape(-1, *x0.shape[1:])  # row-major: image i, then timesteps
    return save_grid(grid, path, nrow=len(ts))


def denoising_strip(
    frames: Mapping[int, Tensor],
    final: Tensor,
    path: str | Path,
    timesteps: Sequence[int] = DENOISING_TIMESTEPS,
    n: int | None = None,
    padding: int = 2,
) -> Path:
    """Progressive generation: one row per image, columns x_t at ``timesteps`` (in the order given) then ``final``.

    ``frames`` maps original timesteps to x_t [N, C, H, W], as returned by
    ``ddpm.sample(..., intermediates=timesteps)``; ``final`` is the sample x₀ [N, C, H, W]. Noisy values beyond
    [-1, 1] are clamped for display. ``n`` keeps the first n images (rows). The PNG is
    ``(len(timesteps)+1)·(W+p)+p`` pixels wide and ``N·(H+p)+p`` high.
    """
    missing = [t for t in timesteps if t not in frames]
    if missing:
        raise ValueError(f"no frame recorded for timesteps {missing}; have {sorted(frames)}")
    _check_images(final, "final")
    cols = [frames[t] for t in timesteps] + [final]
    for t, c in zip([*timesteps, "final"], cols, strict=True):
        _check_images(c, f"frames[{t}]")
        if c.shape != final.shape:
            raise ValueError(f"frames[{t}] has shape {tuple(c.shape)} but final has {tuple(final.shape)}")
    k = final.shape[0] if n is None else max(1, min(n, final.shape[0]))
    cols = [_to_unit(c[:k]) for c in cols]  # in [0, 1]; uint8 and float frames may mix
    grid = torch.stack(cols, dim=1).reshape(-1, *final.shape[1:])  # row-major: image i, then timesteps
    return _save_unit_grid(grid, path, len(cols), padding)


def denoising_gif(
    frames_sequence: Sequence[Tensor] | Mapping[int, Tensor],
    path: str | Path,
    duration_ms: int = 80,
    hold_last_ms: int = 1000,
    nrow: int | None = None,
    padding: int = 2,
    loop: int = 0,
) -> Path:
    """An animated GIF whose k-th frame is the grid of ``frames_sequence[k]`` [N, C, H, W] (same shape for all).

    A mapping {t: x_t} (as from ``ddpm.sample(..., intermediates=...)``) is played from the largest t down.
    Each frame shows for ``duration_ms``, the last for ``duration_ms + hold_last_ms``; ``loop=0`` repeats forever.
    Grayscale batches give a grayscale GIF. Note that PIL merges consecutive frames that are pixel-identical
    (their durations add up), so the file may then hold fewer frames than the sequence.
    """
    if isinstance(frames_sequence, Mapping):
        seq = [frames_sequence[t] for t in sorted(frames_sequence, reverse=True)]
    else:
        seq = list(frames_sequence)
    if not seq:
        raise ValueError("denoising_gif needs at least one frame")
    _check_images(seq[0], "frames_sequence[0]")
    for i, f in enumerate(seq):
        if f.shape != seq[0].shape:
            raise ValueError(f"frame {i} has shape {tuple(f.shape)}, frame 0 has {tuple(seq[0].shape)}")
    nrow = nrow or max(1, math.ceil(math.sqrt(seq[0].shape[0])))
    images = [_to_pil(_grid_uint8(f, nrow, padding)) for f in seq]
    durations = [int(duration_ms)] * len(images)
    durations[-1] += int(hold_last_ms)
    path = _prepare(path)
    images[0].save(
        path, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=loop, disposal=1
    )
    return path


# --------------------------------------------------------------------------------------------- figures
def _figure(width_in: float, height_in: float, dpi: int) -> Figure:
    """A bare matplotlib Figure on an Agg canvas (thread-safe; no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig: Figure, path: str | Path) -> Path:
    path = _prepare(path)
    fig.savefig(path, dpi=fig.dpi, format="png", facecolor="white")
    return path


def _imshow(ax: Any, grid: Tensor) -> None:
    """Show a uint8 grid [C, H, W] pixel for pixel (gray colormap for C=1)."""
    arr = grid.permute(1, 2, 0).numpy()
    if arr.shape[2] == 1:
        ax.imshow(arr[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(arr, interpolation="nearest")
    ax.set_axis_off()


def real_vs_generated(
    real: Tensor,
    fake: Tensor,
    path: str | Path,
    n: int = 32,
    nrow: int | None = None,
    titles: tuple[str, str] = ("real", "generated"),
    panel_inches: float = 4.0,
    dpi: int = 100,
) -> Path:
    """Two titled panels side by side: a grid of the first n ``real`` images (left) and of ``fake`` (right).

    real [N₁, C, H, W] and fake [N₂, C', H, W] (float in [-1, 1] or uint8; a grayscale panel next to an RGB one
    is shown in RGB). Each panel is ``panel_inches`` wide; the figure is (2·panel_inches + 1) in wide
    and (panel_inches · grid aspect + 0.75) in high at ``dpi`` (matplotlib truncates to whole pixels).
    """
    _check_images(real, "real")
    _check_images(fake, "fake")
    if real.shape[2:] != fake.shape[2:]:
        raise ValueError(
            f"real and fake images differ in size: {tuple(real.shape[2:])} vs {tuple(fake.shape[2:])}"
        )
    k = max(1, min(n, real.shape[0], fake.shape[0]))
    nrow = nrow or max(1, math.ceil(math.sqrt(k)))
    grids = [_grid_uint8(real[:k], nrow), _grid_uint8(fake[:k], nrow)]
    if grids[0].shape[0] != grids[1].shape[0]:
        grids = [g.expand(3, -1, -1) for g in grids]
    gh, gw = grids[0].shape[1:]
    margin, gap, top = 0.25, 0.5, 0.5  # inches; binary fractions keep pixel sizes exact
    pw, ph = panel_inches, panel_inches * gh / gw
    w, h = 2 * pw + 2 * margin + gap, ph + margin + top
    fig = _figure(w, h, dpi)
    for i, (g, title) in enumerate(zip(grids, titles, strict=True)):
        ax = fig.add_axes(((margin + i * (pw + gap)) / w, margin / h, pw / w, ph / h))
        _imshow(ax, g)
        ax.set_title(title, fontsize=13)
    return _save_figure(fig, path)


def class_grid(x: Tensor, num_classes: int, path: str | Path, padding: int = 2) -> Path:
    """Samples of a class-conditional model, one row per class.

    x [num_classes·k, C, H, W] is ordered row-major by class (the k samples of class 0, then class 1, …); the PNG
    is ``k·(W+p)+p`` pixels wide and ``num_classes·(H+p)+p`` high.
    """
    _check_images(x)
    if num_classes < 1 or x.shape[0] % num_classes:
        raise ValueError(f"{x.shape[0]} images cannot be split into {num_classes} equal class rows")
    return save_grid(x, path, nrow=x.shape[0] // num_classes, padding=padding)


def _schedule_curves(s: Any) -> dict[str, Tensor]:
    """ᾱ_t, √ᾱ_t and λ_t of a schedule as float64 CPU tensors (computed from ``alphas_cumprod`` if absent)."""
    ac = s.alphas_cumprod.detach().double().cpu()
    log_snr = getattr(s, "log_snr", None)
    return {
        "alpha_bar": ac,
        "sqrt_alpha_bar": ac.sqrt(),
        "log_snr": torch.log(ac) - torch.log1p(-ac) if log_snr is None else log_snr.detach().double().cpu(),
    }


def plot_alpha_bar(
    schedules: Mapping[str, NoiseSchedule],
    path: str | Path,
    second: str | None = "log_snr",
    dpi: int = 100,
) -> Path:
    """ᾱ_t against t for named schedules (e.g. {"linear": NoiseSchedule.linear(1000), "cosine": …}).

    The left panel shows ᾱ_t (solid) and √ᾱ_t (dashed, the signal coefficient of x₀); ``second`` adds a right
    panel: ``"log_snr"`` (λ_t = log ᾱ_t/(1−ᾱ_t)), ``"sqrt_alpha_bar"``, or None for the left panel only.
    Schedules of different lengths T are drawn against t/T. The figure is 5 in per panel × 3.5 in at ``dpi``.
    """
    if not schedules:
        raise ValueError("plot_alpha_bar needs at least one schedule")
    if second not in (None, "log_snr", "sqrt_alpha_bar"):
        raise ValueError(f"second must be 'log_snr', 'sqrt_alpha_bar' or None, not {second!r}")
    curves = {name: _schedule_curves(s) for name, s in schedules.items()}
    lengths = {len(c["alpha_bar"]) for c in curves.values()}
    normalise = len(lengths) > 1
    npanels = 1 if second is None else 2
    fig = _figure(5.0 * npanels, 3.5, dpi)
    axes = fig.subplots(1, npanels, squeeze=False)[0]
    for i, (name, c) in enumerate(curves.items()):
        T = len(c["alpha_bar"])
        steps = torch.arange(T, dtype=torch.float64)
        t = (steps / T).numpy() if normalise else steps.numpy()
        color = f"C{i}"
        axes[0].plot(t, c["alpha_bar"].numpy(), color=color, lw=2, label=rf"{name}: $\bar\alpha_t$")
        if second != "sqrt_alpha_bar":
            axes[0].plot(
                t,
                c["sqrt_alpha_bar"].numpy(),
                color=color,
                lw=1,
                ls="--",
                label=rf"{name}: $\sqrt{{\bar\alpha_t}}$",
            )
        if second is not None:
            axes[1].plot(t, c[second].numpy(), color=color, lw=2, label=name)
    xlabel = "t / T" if normalise else "t"
    axes[0].set_title(r"$\bar\alpha_t$ (signal fraction of $x_t$)")
    axes[0].set_ylim(-0.02, 1.02)
    if second is not None:
        axes[1].set_title(
            r"log SNR $\lambda_t = \log \bar\alpha_t / (1 - \bar\alpha_t)$"
            if second == "log_snr"
            else r"$\sqrt{\bar\alpha_t}$"
        )
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)


def _number(v: Any) -> float | None:
    """A finite float from a number, 0-d tensor or numpy scalar; None otherwise."""
    if hasattr(v, "item") and not isinstance(v, numbers.Number):
        try:
            v = v.item()
        except (ValueError, RuntimeError):
            return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def plot_metric_table(
    rows: Sequence[Mapping[str, Any]],
    x_key: str,
    y_keys: Sequence[str],
    path: str | Path,
    title: str | None = None,
    log_y: Sequence[str] = (),
    ncols: int | None = None,
    dpi: int = 100,
) -> Path:
    """One small panel per metric in ``y_keys`` against ``x_key`` (e.g. step vs FID, KID, confidence, val loss).

    Rows lacking a key, or holding None / non-finite values for it, are left out of that panel. Panels are laid
    out ``ncols`` per line (default: all in one line, at most 4); each is 3 × 2.75 in at ``dpi``, plus 0.4 in
    on top when ``title`` is given. Metrics named in ``log_y`` get a log-scaled y axis.
    """
    if not y_keys:
        raise ValueError("plot_metric_table needs at least one y key")
    ncols = ncols or min(len(y_keys), 4)
    nrows = math.ceil(len(y_keys) / ncols)
    fig = _figure(3.0 * ncols, 2.75 * nrows + (0.4 if title else 0.0), dpi)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, key in zip(axes, y_keys, strict=False):
        pts = [(_number(r.get(x_key)), _number(r.get(key))) for r in rows]
        pts = sorted((x, y) for x, y in pts if x is not None and y is not None)
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, "o-", lw=1.5, ms=3)
            if key in log_y and min(ys) > 0:
                ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(x_key, fontsize=9)
        ax.tick_params(which="both", labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(y_keys) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save_figure(fig, path)


# --------------------------------------------------------------------------------------------- tables
def _cell(v: Any, floatfmt: str | None) -> str:
    """A table cell: "" for None, floats with ``floatfmt`` (None: shortest round-trip repr), else ``str``."""
    if v is None:
        return ""
    if hasattr(v, "item") and not isinstance(v, (numbers.Number, str)):
        try:
            v = v.item()
        except (ValueError, RuntimeError):
            pass
    if isinstance(v, float) and floatfmt is not None:
        return format(v, floatfmt) if math.isfinite(v) else str(v)
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], floatfmt: str = ".4g") -> str:
    """A Markdown table: a header of ``keys``, then one line per row (missing / None cells are empty).

    Floats are formatted with ``floatfmt``; ``|`` in cells is escaped. Ends with a newline.
    """

    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(str(k)) for k in keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(esc(_cell(r.get(k), floatfmt)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    """CSV text: a header of ``keys``, then one line per row (missing / None cells empty, floats at full precision)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys)
    for r in rows:
        w.writerow([_cell(r.get(k), None) for k in keys])
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- training logs
def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (lines that fail to parse are skipped): :func:`ddpm.runlog.read`."""
    return runlog.read(path)


def loss_stats(records: Sequence[dict[str, Any]], key: str = "loss") -> dict[str, float]:
    """Mean, min, max and final value of ``key`` over the records that have it (the seed paper's loss table)."""
    vals = [
        float(r[key]) for r in records if key in r and r[key] is not None and math.isfinite(float(r[key]))
    ]
    if not vals:
        return {}
    return {
        "mean": sum(vals) / len(vals),
        "min": min(vals),
        "max": max(vals),
        "final": vals[-1],
        "n": len(vals),
    }


def loss_stats_markdown(records: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`loss_stats` for the training and validation losses."""
    rows = ["| loss | mean | min | max | final | points |", "|---|---|---|---|---|---|"]
    for key, label in (("loss", "train"), ("val_loss", "validation")):
        s = loss_stats(records, key)
        if s:
            rows.append(
                f"| {label} | {s['mean']:.5f} | {s['min']:.5f} | {s['max']:.5f} | {s['final']:.5f} | {s['n']} |"
            )
    return "\n".join(rows) + "\n"


def plot_losses(records: Sequence[dict[str, Any]], path: str | Path, title: str = "training loss") -> Path:
    """Train (raw and smoothed) and validation loss against step, log-scaled, as a PNG (7 × 4 in at 120 dpi); FID
    during training (``train.fid_every``), when the records hold it, on a second axis at the right."""
    train = [(r["step"], r["loss"]) for r in records if "loss" in r and "step" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r and "step" in r]
    fid = [(r["step"], r["fid"], r.get("fid_n")) for r in records if "fid" in r and "step" in r]
    fig = _figure(7, 4, 120)
    ax = fig.add_subplot()
    if train:
        s, v = zip(*train, strict=True)
        ax.plot(s, v, color="tab:blue", alpha=0.35, lw=1, label="train")
        k = max(1, len(v) // 20)
        smooth = [
            sum(v[max(0, i - k + 1) : i + 1]) / len(v[max(0, i - k + 1) : i + 1]) for i in range(len(v))
        ]
        ax.plot(s, smooth, color="tab:blue", lw=2, label=f"train (mean of {k})")
    if val:
        s, v = zip(*val, strict=True)
        ax.plot(s, v, "o-", color="tab:orange", lw=2, ms=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    if fid:
        s, v, n = zip(*fid, strict=True)
        right = ax.twinx()
        right.plot(s, v, "s-", color="tab:green", lw=2, ms=4, label=f"FID ({n[-1]} samples)")
        right.set_ylabel("FID")
        h, lab = right.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    if train or val:
        ax.set_yscale("log")
    if handles:
        ax.legend(handles, labels)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_figure(fig, path)
