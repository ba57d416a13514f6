"""The Edit tab, over :mod:`ddpm.editing`: inpaint (RePaint) where a mask drawn on the image or one of
:data:`ddpm.editing.MASK_PRESETS` says, SDEdit with a strength slider, and interpolation between two images.
Images are uploaded or picked from the run's test set; each result is a grid (input, mask, results) and an
``.npz`` of the results (uint8 ``x`` [N, H, W, C], as ``ddpm sample`` writes)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data import to_uint8
from ..editing import MASK_PRESETS, inpaint, interpolate, mask_preset, sdedit
from ..pipeline import LoadedModel, save_images
from ..sampling import METHODS
from ..viz import grid_array
from .context import PIXELS, Context, dataset_image, guided_model, handler, to_model_input, to_model_mask
from .limits import RequestError, choice, integer, number

__all__ = ["DRAWN", "MASKS", "build", "edit_inpaint", "edit_interpolate", "edit_sdedit"]

DRAWN = "drawn"
MASKS = (DRAWN, *[m for m in MASK_PRESETS if m != "random:P"], "random:0.5")


def _editor_parts(value: Any) -> tuple[Any, np.ndarray | None]:
    """(background image, drawn pixels [H, W] bool or None) of a ``gr.ImageEditor`` value (or a plain image)."""
    if isinstance(value, dict):
        bg = value.get("background")
        if bg is None:
            bg = value.get("composite")
        layers = [np.asarray(layer) for layer in value.get("layers") or [] if layer is not None]
        drawn = None
        for layer in layers:
            if layer.ndim == 3 and layer.shape[2] == 4:
                d = layer[..., 3] > 0
                drawn = d if drawn is None or drawn.shape != d.shape else drawn | d
        return bg, drawn
    return value, None


def _result(ctx: Context, rows: Tensor, ncol: int, results: Tensor) -> tuple[Any, list[str]]:
    """The grid of ``rows`` (images in [−1, 1], ``ncol`` a row) and the ``.npz`` of ``results``."""
    path = save_images(to_uint8(results.float().cpu()), ctx.scratch() / "edit.npz")
    return grid_array(rows.float().cpu(), nrow=ncol), [str(path)]


def _generator(lm: LoadedModel, seed: Any) -> torch.Generator:
    device = next(lm.model.parameters()).device
    return torch.Generator(device).manual_seed(integer("seed", seed, 0, 2**62 - 1))


def edit_inpaint(
    ctx: Context,
    run: Any,
    editor: Any,
    mask: Any,
    steps: Any,
    jump_length: Any,
    jump_n_sample: Any,
    samples: Any,
    seed: Any,
    klass: Any = "none",
    guidance: Any = 0.0,
) -> tuple[Any, list[str]]:
    """RePaint the pixels drawn over (``mask="drawn"``) or those a preset mask leaves out; ``samples``
    completions. Returns (grid: input, known pixels, completions; [.npz])."""
    lm = ctx.runs.model(run)
    lim = ctx.limits
    mask = choice("mask", mask, list(MASKS))
    steps = lim.steps(steps, lm.diffusion.num_timesteps)
    jl = integer("jump_length", jump_length, 1, steps)
    jn = integer("jump_n_sample", jump_n_sample, 1, 20)
    k = integer("samples", samples, 1, lim.max_samples)
    lim.evals(steps * jn, f"RePaint with {steps} steps and jump_n_sample {jn}")
    g = _generator(lm, seed)
    bg, drawn = _editor_parts(editor)
    x = to_model_input("image", bg, lm, lim)
    s = x.shape[-1]
    if mask == DRAWN:
        if drawn is None or not drawn.any():
            raise RequestError("mask: draw over the pixels to fill in, or choose a preset mask")
        m = to_model_mask("mask", ~drawn, lm)
    else:
        m = mask_preset(mask, (s, s), torch.Generator().manual_seed(int(seed))).to(x.device)
    out = inpaint(
        guided_model(lm, klass, guidance), lm.diffusion, x.repeat(k, 1, 1, 1), m, steps, jl, jn, g,
        clip_denoised=lm.config.sample.clip_denoised,
    )  # fmt: skip
    return _result(ctx, torch.cat([x, x * m, out]), k + 2, out)


def edit_sdedit(
    ctx: Context,
    run: Any,
    image: Any,
    strength: Any,
    method: Any,
    steps: Any,
    seed: Any,
    klass: Any = "none",
    guidance: Any = 0.0,
) -> tuple[Any, list[str]]:
    """SDEdit: noise the image to t₀ = strength·T and sample back with ``method``. Returns (grid: input,
    result; [.npz])."""
    lm = ctx.runs.model(run)
    strength = number("strength", strength, 0.0, 1.0)
    method = choice("method", method, list(METHODS))
    steps = ctx.limits.steps(steps, lm.diffusion.num_timesteps)
    ctx.limits.evals(2 * steps if method == "heun" else steps, f"{method} with {steps} steps")
    x = to_model_input("image", image, lm, ctx.limits)
    out = sdedit(
        guided_model(lm, klass, guidance), lm.diffusion, x, strength, method, steps, _generator(lm, seed),
        clip_denoised=lm.config.sample.clip_denoised,
    )  # fmt: skip
    return _result(ctx, torch.cat([x, out]), 2, out)


def edit_interpolate(
    ctx: Context, run: Any, image_a: Any, image_b: Any, frames: Any, steps: Any
) -> tuple[Any, list[str]]:
    """Interpolate between two images through their DDIM noises. Returns (grid: a, frames, b; [.npz])."""
    lm = ctx.runs.model(run)
    n = integer("frames", frames, 2, ctx.limits.max_frames)
    steps = ctx.limits.steps(steps, lm.diffusion.num_timesteps)
    ctx.limits.evals(2 * steps, f"interpolation with {steps} steps")
    a, b = (
        to_model_input("image A", image_a, lm, ctx.limits),
        to_model_input("image B", image_b, lm, ctx.limits),
    )
    clip = lm.config.sample.clip_denoised
    out = interpolate(guided_model(lm, "none", 0.0), lm.diffusion, a, b, n, steps, clip_denoised=clip)[:, 0]
    return _result(ctx, torch.cat([a, out, b]), n + 2, out)


def build(ctx: Context, demo: Any) -> None:
    """The tab's widgets and events, inside the page's ``gr.Blocks``."""
    import gradio as gr

    labels, lim = ctx.runs.labels, ctx.limits
    first = ctx.runs.model(labels[0])
    T = min(first.diffusion.num_timesteps, lim.max_steps)
    k = first.config.model.num_classes
    with gr.Row():
        run = gr.Dropdown(labels, value=labels[0], label="run")
        index = gr.Number(0, precision=0, minimum=0, label="test image of the run's dataset")
        seed = gr.Number(0, precision=0, minimum=0, label="seed")
        klass = gr.Dropdown(
            ["none", *map(str, range(k or 0))], value="none", label="class", visible=k is not None
        )
        guidance = gr.Slider(-1, 10, value=0, step=0.1, label="guidance w", visible=k is not None)
    compute: dict[str, Any] = {"concurrency_limit": lim.concurrency, "concurrency_id": "compute"}
    pick = handler(lambda r, i: dataset_image(ctx, r, i))
    with gr.Tab("Inpaint"):
        with gr.Row():
            with gr.Column():
                editor = gr.ImageEditor(label="image: paint over what to fill in", type="numpy",
                                        image_mode="RGBA", elem_id="edit-editor")  # fmt: skip
                pick_e = gr.Button("use test image")
                mask = gr.Dropdown(list(MASKS), value="right-half", label="mask")
                i_steps = gr.Slider(1, T, value=min(50, T), step=1, label="steps")
                jl = gr.Slider(1, 20, value=5, step=1, label="jump length")
                jn = gr.Slider(1, 20, value=2, step=1, label="jump_n_sample (resamplings)")
                ks = gr.Slider(1, lim.max_samples, value=3, step=1, label="completions")
                go_i = gr.Button("Inpaint", variant="primary")
            with gr.Column():
                out_i = gr.Image(
                    label="input · known pixels · completions",
                    elem_classes=PIXELS,
                    interactive=False,
                    format="png",
                    height=240,
                )
                file_i = gr.File(label="download (.npz)", file_count="multiple", interactive=False)
    with gr.Tab("SDEdit"):
        with gr.Row():
            with gr.Column():
                im_s = gr.Image(label="image", type="numpy")
                pick_s = gr.Button("use test image")
                strength = gr.Slider(
                    0, 1, value=0.5, step=0.01, label="strength (0: the input, 1: a new sample)"
                )
                method = gr.Dropdown(list(METHODS), value="ddpm", label="sampler")
                s_steps = gr.Slider(1, T, value=min(50, T), step=1, label="steps below t₀")
                go_s = gr.Button("SDEdit", variant="primary")
            with gr.Column():
                out_s = gr.Image(
                    label="input · result", elem_classes=PIXELS, interactive=False, format="png", height=240
                )
                file_s = gr.File(label="download (.npz)", file_count="multiple", interactive=False)
    with gr.Tab("Interpolate"):
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    im_a, im_b = (
                        gr.Image(label="image A", type="numpy"),
                        gr.Image(label="image B", type="numpy"),
                    )
                with gr.Row():
                    pick_a, pick_b = gr.Button("A: test image"), gr.Button("B: test image + 1")
                frames = gr.Slider(2, lim.max_frames, value=8, step=1, label="frames (ends included)")
                n_steps = gr.Slider(1, T, value=min(50, T), step=1, label="DDIM steps")
                go_n = gr.Button("Interpolate", variant="primary")
            with gr.Column():
                out_n = gr.Image(
                    label="A · frames · B", elem_classes=PIXELS, interactive=False, format="png", height=240
                )
                file_n = gr.File(label="download (.npz)", file_count="multiple", interactive=False)

    pick_e.click(pick, [run, index], editor, api_visibility="private")
    pick_s.click(pick, [run, index], im_s, api_visibility="private")
    pick_a.click(pick, [run, index], im_a, api_visibility="private")
    pick_b.click(handler(lambda r, i: dataset_image(ctx, r, integer("index", i, 0) + 1)), [run, index], im_b,
                 api_visibility="private")  # fmt: skip
    go_i.click(
        handler(functools.partial(edit_inpaint, ctx)),
        [run, editor, mask, i_steps, jl, jn, ks, seed, klass, guidance],
        [out_i, file_i],
        api_name="inpaint",
        **compute,
    )
    go_s.click(
        handler(functools.partial(edit_sdedit, ctx)),
        [run, im_s, strength, method, s_steps, seed, klass, guidance],
        [out_s, file_s],
        api_name="sdedit",
        **compute,
    )
    go_n.click(
        handler(functools.partial(edit_interpolate, ctx)),
        [run, im_a, im_b, frames, n_steps],
        [out_n, file_n],
        api_name="interpolate",
        **compute,
    )
