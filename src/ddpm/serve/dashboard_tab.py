"""The Run dashboard tab: a run's loss and validation curves, learning rate and FID over training (where its
``metrics.jsonl`` has them, read through :mod:`ddpm.runlog`), the sample grids written during training as a
scrubbable sequence, and the resolved config. A timer re-reads the run every few seconds; the figures are
redrawn only when the log has grown."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .context import PIXELS, Context, handler, render

__all__ = ["REFRESH_S", "build", "curves_figure", "dashboard"]

REFRESH_S = 3.0


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the records that carry a numeric ``key`` and an integer ``step``."""
    xs, ys = [], []
    for r in records:
        v, s = r.get(key), r.get("step")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(s, int):
            xs.append(float(s))
            ys.append(float(v))
    return xs, ys


def curves_figure(records: Sequence[dict[str, Any]]) -> Any:
    """Loss (and validation loss), learning rate and FID against the step: one panel each where logged."""
    from matplotlib.figure import Figure

    panels = [
        ("loss", [("loss", "train"), ("val_loss", "validation")], True),
        ("learning rate", [("lr", "lr")], False),
        ("FID", [("fid", "FID")], False),
    ]
    shown = [(t, [(k, lab, *_series(records, k)) for k, lab in keys], log) for t, keys, log in panels]
    shown = [(t, ss, log) for t, ss, log in shown if any(xs for _, _, xs, _ in ss)]
    fig = Figure(figsize=(4 * max(len(shown), 1), 3), dpi=90)
    axes = fig.subplots(1, max(len(shown), 1), squeeze=False)[0]
    if not shown:
        axes[0].text(0.5, 0.5, "nothing logged yet", ha="center", va="center")
        axes[0].set_axis_off()
    for ax, (title, series, log) in zip(axes, shown, strict=False):
        for _, label, xs, ys in series:
            if xs:
                ax.plot(xs, ys, lw=1.5, marker="o" if len(xs) < 20 else None, ms=3, label=label)
        if log and all(y > 0 for _, _, _, ys in series for y in ys):
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _summary(ctx: Context, run: Any, records: Sequence[dict[str, Any]]) -> str:
    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    last = {k: v for r in records for k, v in r.items() if k in ("loss", "val_loss", "fid")}
    ckpts = ctx.runs.checkpoints(run)[1:]
    parts = [f"**{run}** · step {max(steps) if steps else 0}", f"{len(ckpts)} checkpoint(s)"]
    parts += [f"last {k} {v:.4g}" for k, v in last.items() if isinstance(v, (int, float))]
    return " · ".join(parts)


def dashboard(ctx: Context, run: Any, index: Any, seen: Any) -> tuple[Any, ...]:
    """(summary, curves, grid slider, grid image, config, state) for ``run``; the figure and config are
    ``gr.skip()`` when the log is as ``seen`` (the state: its length), so a timer tick costs little."""
    import gradio as gr

    records = ctx.runs.records(run)
    grids = ctx.runs.sample_grids(run)
    key = [run, len(records), len(grids)]
    changed = key != seen
    n = len(grids)
    scrubbed_back = (
        isinstance(seen, list) and seen[0] == run and isinstance(index, (int, float)) and index < seen[2] - 1
    )
    i = int(min(max(index, 0), n - 1)) if scrubbed_back else n - 1  # else follow the newest grid
    slider = gr.update(maximum=max(n - 1, 1), value=max(i, 0), visible=n > 0) if changed else gr.skip()
    image = (_pixels(grids[i]) if n else None) if changed else gr.skip()
    label = f"training grid: {grids[i].stem}" if n else "no sample grids written yet"
    return (
        _summary(ctx, run, records),
        render(lambda: curves_figure(records)) if changed else gr.skip(),
        slider,
        gr.update(value=image, label=label) if changed else gr.skip(),
        ctx.runs.config(run) if changed else gr.skip(),
        key,
    )


def _pixels(path: Path) -> Any:
    """A PNG as a uint8 array (sent as pixels: the page serves no file of the run directory)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except OSError:  # being written, or removed
        return None


def _scrub(ctx: Context, run: Any, index: Any) -> Any:
    import gradio as gr

    grids = ctx.runs.sample_grids(run)
    if not grids:
        return gr.update(value=None)
    i = int(min(max(index if isinstance(index, (int, float)) else 0, 0), len(grids) - 1))
    return gr.update(value=_pixels(grids[i]), label=f"training grid: {grids[i].stem}")


def build(ctx: Context, demo: Any) -> None:
    """The tab's widgets and events, inside the page's ``gr.Blocks``."""
    import gradio as gr

    labels = ctx.runs.labels
    with gr.Row():
        run = gr.Dropdown(labels, value=labels[0], label="run", scale=1)
        summary = gr.Markdown(elem_id="dashboard-summary")
    curves = gr.Image(label="training curves", elem_id="dashboard-curves", interactive=False, format="png")
    with gr.Row():
        with gr.Column():
            index = gr.Slider(
                0,
                max(len(ctx.runs.sample_grids(labels[0])) - 1, 1),
                value=0,
                step=1,
                label="sample grids written during training",
            )
            grid = gr.Image(
                label="training grid",
                elem_classes=PIXELS,
                interactive=False,
                elem_id="dashboard-grid",
                format="png",
            )
        with gr.Column():
            config = gr.JSON(label="resolved config", elem_id="dashboard-config")
    seen = gr.State(None)
    timer = gr.Timer(REFRESH_S)
    refresh = handler(functools.partial(dashboard, ctx))
    outputs = [summary, curves, index, grid, config, seen]
    demo.load(refresh, [run, index, seen], outputs, api_visibility="private")
    run.change(lambda r: None, run, seen, api_visibility="private").then(
        refresh, [run, index, seen], outputs, api_visibility="private"
    )
    timer.tick(refresh, [run, index, seen], outputs, api_name="dashboard", concurrency_limit=None,
               show_progress="hidden")  # fmt: skip
    index.release(handler(lambda r, i: _scrub(ctx, r, i)), [run, index], grid, api_visibility="private")
