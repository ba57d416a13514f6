"""The Learn tab: the forward process q(x_t | x₀) = N(√ᾱ_t x₀, (1 − ᾱ_t) I) (Ho et al. 2020, eq. 4) of a chosen
image at a chosen t, under the linear (Ho et al. 2020 §4) and cosine (Nichol & Dhariwal 2021, eq. 17) schedules
side by side with the same noise ε, beside their ᾱ_t and SNR_t = ᾱ_t / (1 − ᾱ_t) over t."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..diffusion import GaussianDiffusion
from ..schedule import NoiseSchedule
from ..viz import grid_array
from .context import PIXELS, Context, dataset_image, handler, render, to_model_input
from .limits import integer

__all__ = ["T", "build", "forward_images", "schedules", "schedule_figure"]

T = 1000  # the schedules as the papers define them


def schedules() -> dict[str, NoiseSchedule]:
    """The linear (β from 1e-4 to 0.02) and cosine (s = 0.008) schedules over T = 1000 steps."""
    return {"linear": NoiseSchedule.linear(T), "cosine": NoiseSchedule.cosine(T)}


def forward_images(ctx: Context, run: Any, image: Any, t: Any, seed: Any) -> tuple[Any, Any, Any, str]:
    """(x₀, x_t under the linear schedule, x_t under the cosine one, a line with ᾱ_t and SNR of each).

    ``image``: an uploaded uint8 image, resized to the run's model size; ``t`` in [0, T − 1]."""
    lm = ctx.runs.model(run)
    t = integer("t", t, 0, T - 1)
    g = torch.Generator().manual_seed(integer("seed", seed, 0, 2**62 - 1))
    x0 = to_model_input("image", image, lm, ctx.limits).cpu()
    eps = torch.randn(x0.shape, generator=g)
    out, lines = [], []
    for name, s in schedules().items():
        x_t = GaussianDiffusion(s).q_sample(x0, torch.tensor([t]), eps)
        a = float(s.alphas_cumprod[t])
        out.append(grid_array(x_t))
        lines.append(f"**{name}**: ᾱ_t = {a:.4f}, SNR = {a / (1 - a):.4g}")
    return grid_array(x0), out[0], out[1], f"t = {t}: " + " · ".join(lines)


def schedule_figure(t: Any) -> Any:
    """ᾱ_t and SNR_t (log scale) of both schedules against t, with a line at ``t``."""
    from matplotlib.figure import Figure

    t = integer("t", t, 0, T - 1)
    fig = Figure(figsize=(9, 3.2), dpi=90)
    ax1, ax2 = fig.subplots(1, 2)
    steps = np.arange(T)
    for name, s in schedules().items():
        a = s.alphas_cumprod.numpy()
        ax1.plot(steps, a, lw=2, label=name)
        ax2.plot(steps, a / (1 - a), lw=2, label=name)
    ax1.set_title("ᾱ_t (signal fraction)")  # plain text: matplotlib's mathtext parser is not thread-safe
    ax2.set_title("SNR_t = ᾱ_t / (1 − ᾱ_t)")
    ax2.set_yscale("log")
    for ax in (ax1, ax2):
        ax.axvline(t, color="k", lw=1, ls="--")
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def build(ctx: Context, demo: Any) -> None:
    """The tab's widgets and events, inside the page's ``gr.Blocks``."""
    import gradio as gr

    labels = ctx.runs.labels
    gr.Markdown(
        "x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε: the same image and the same noise ε under two schedules. The cosine "
        "schedule keeps more of the image at mid t (its SNR falls more slowly)."
    )
    with gr.Row():
        with gr.Column(scale=1):
            run = gr.Dropdown(labels, value=labels[0], label="run (its image size and channels)")
            image = gr.Image(label="x₀ (upload, or a test image of the run's dataset)", type="numpy")
            index = gr.Number(0, precision=0, minimum=0, label="test image")
            pick = gr.Button("use test image")
            t = gr.Slider(0, T - 1, value=250, step=1, label="t")
            seed = gr.Number(0, precision=0, minimum=0, label="noise seed")
        with gr.Column(scale=2):
            info = gr.Markdown(elem_id="learn-info")
            with gr.Row():
                shown0 = gr.Image(
                    label="x₀", elem_classes=PIXELS, interactive=False, format="png", height=240
                )
                lin = gr.Image(
                    label="x_t, linear",
                    elem_classes=PIXELS,
                    interactive=False,
                    elem_id="learn-linear",
                    format="png",
                )
                cos = gr.Image(
                    label="x_t, cosine",
                    elem_classes=PIXELS,
                    interactive=False,
                    elem_id="learn-cosine",
                    format="png",
                )
            plot = gr.Image(
                label="ᾱ_t and SNR", elem_id="learn-plot", interactive=False, format="png", height=240
            )

    forward = handler(lambda r, im, tt, s: forward_images(ctx, r, im, tt, s))
    figure = handler(lambda tt: render(lambda: schedule_figure(tt)))
    pick.click(handler(lambda r, i: dataset_image(ctx, r, i)), [run, index], image, api_name="learn_image")
    for ev in (image.change, t.release, seed.change, run.change):
        ev(forward, [run, image, t, seed], [shown0, lin, cos, info], api_visibility="private")
    t.release(figure, t, plot, api_visibility="private")
    demo.load(figure, t, plot, api_visibility="private")
    demo.load(handler(lambda r: _try_default(ctx, r)), run, image, api_visibility="private")


def _try_default(ctx: Context, run: Any) -> Any:
    """The run's first test image, or nothing where its dataset is not on this machine."""
    from ..data import DataError

    try:
        return dataset_image(ctx, run, 0)
    except DataError:
        return None
