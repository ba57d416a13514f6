"""The Sample tab: draw a batch from a run with any sampler of :data:`ddpm.sampling.METHODS`, watching x_t and
the predicted x̂₀ every few network evaluations (a Gradio generator), and download the grid as PNG and ``.npz``.

Sampling runs in a worker thread (:func:`ddpm.pipeline.generate` with ``on_eval``) that hands each evaluation's
(x_t, x̂₀, t) to the generator through a queue; the generator shows the newest every few evaluations. A request
that ends early (the page closed, an error) stops the worker at its next evaluation.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from torch import Tensor

from ..pipeline import generate, save_images
from ..sampling import METHODS
from ..viz import grid_array
from .context import PIXELS, Context, class_labels, guidance_scale, handler
from .limits import choice, integer, number

__all__ = ["FRAMES", "build", "evaluations", "sample_stream"]

FRAMES = 25  # about this many updates of x_t and x̂₀ per request


class _Stopped(Exception):
    """Raised inside the worker when the request has gone away."""


def evaluations(method: str, steps: int) -> int:
    """Network evaluations of one batch: two per step for Heun, one for every other sampler."""
    return 2 * steps if method == "heun" else steps


def sample_stream(
    ctx: Context,
    run: Any,
    checkpoint: Any,
    ema: Any,
    method: Any,
    steps: Any,
    eta: Any,
    seed: Any,
    n: Any,
    klass: Any,
    guidance: Any,
    progress: Any = None,
) -> Iterator[tuple[Any, Any, str, Any, Any]]:
    """Yield (x_t grid, x̂₀ grid, status, final grid, [PNG, .npz]) as sampling goes; the last has the result.

    Every argument is checked against ``ctx.limits`` first (:mod:`ddpm.serve.limits`)."""
    lm = ctx.runs.model(run, checkpoint, ema)
    method = choice("method", method, list(METHODS))
    steps = ctx.limits.steps(steps, lm.diffusion.num_timesteps)
    eta = number("eta", eta, 0.0, 1.0) if method == "ddim" else 0.0
    seed = integer("seed", seed, 0, 2**62 - 1)
    n = ctx.limits.batch(n)
    labels = class_labels(lm, klass, n)
    w = guidance_scale(guidance)
    total = evaluations(method, steps)
    ctx.limits.evals(total, f"{method} with {steps} steps")

    frames: queue.Queue[tuple[str, Any]] = queue.Queue()
    stop = threading.Event()

    def on_eval(x: Tensor, x0: Tensor, t: Tensor) -> None:
        if stop.is_set():
            raise _Stopped
        frames.put(("frame", (x.detach().float().cpu(), x0.detach().float().cpu(), int(t[0]))))

    def work() -> None:
        try:
            out = generate(
                lm, n, method=method, steps=steps, eta=eta, seed=seed, batch_size=n, labels=labels,
                guidance=w, threads=None, on_eval=on_eval,
            )  # fmt: skip
            frames.put(("done", out))
        except BaseException as e:  # noqa: BLE001 - handed to the request's thread, which raises it
            frames.put(("error", e))

    t0 = time.monotonic()
    worker = threading.Thread(target=work, name="ddpm-serve-sample", daemon=True)
    worker.start()
    every, count, last = max(1, total // FRAMES), 0, None
    try:
        while True:
            kind, item = frames.get()
            if kind == "frame":
                count, last = count + 1, item
                if count > 1 and count % every:
                    continue
                x, x0, t = last
                status = f"evaluation {count}/{total} · t = {t}"
                if progress is not None:
                    progress(min(count / total, 1.0), desc=status)
                yield grid_array(x), grid_array(x0), status, None, None
            elif kind == "error":
                raise item
            else:
                images = item
                break
    finally:
        stop.set()
    d = ctx.scratch()
    png, npz = save_images(images, d / "samples.png"), save_images(images, d / "samples.npz", labels)
    status = f"done: {n} image(s), {method}, {steps} steps, in {time.monotonic() - t0:.1f}s"
    x_last, x0_last = (grid_array(last[0]), grid_array(last[1])) if last is not None else (None, None)
    yield x_last, x0_last, status, grid_array(images), [str(png), str(npz)]


def build(ctx: Context, demo: Any) -> None:
    """The tab's widgets and events, inside the page's ``gr.Blocks``."""
    import gradio as gr

    runs, lim = ctx.runs, ctx.limits
    first = runs.model(runs.labels[0])
    T = first.diffusion.num_timesteps
    with gr.Row():
        with gr.Column(scale=1):
            run = gr.Dropdown(runs.labels, value=runs.labels[0], label="run")
            ckpt = gr.Dropdown(runs.checkpoints(runs.labels[0]), value="latest", label="checkpoint")
            ema = gr.Checkbox(value=True, label="EMA weights")
            method = gr.Dropdown(list(METHODS), value=first.config.sample.method, label="sampler")
            steps = gr.Slider(1, min(T, lim.max_steps), value=min(first.config.sample.steps or T, T), step=1,
                              label="steps", elem_id="sample-steps")  # fmt: skip
            eta = gr.Slider(0, 1, value=0, step=0.05, label="η (DDIM)")
            seed = gr.Number(0, precision=0, label="seed", minimum=0, elem_id="sample-seed")
            n = gr.Slider(1, lim.max_batch, value=min(8, lim.max_batch), step=1, label="images")
            klass, guidance = _class_widgets(first)
            go = gr.Button("Sample", variant="primary", elem_id="sample-button")
        with gr.Column(scale=2):
            status = gr.Markdown("", elem_id="sample-status")
            with gr.Row():
                xt = gr.Image(
                    label="x_t",
                    elem_id="sample-xt",
                    elem_classes=PIXELS,
                    interactive=False,
                    format="png",
                    height=240,
                )
                x0 = gr.Image(
                    label="predicted x̂₀",
                    elem_id="sample-x0",
                    elem_classes=PIXELS,
                    interactive=False,
                    format="png",
                    height=240,
                )
            grid = gr.Image(
                label="samples",
                elem_id="sample-grid",
                elem_classes=PIXELS,
                interactive=False,
                format="png",
                height=240,
            )
            files = gr.File(label="download (PNG, .npz)", file_count="multiple", interactive=False)

    def stream(
        run: Any,
        checkpoint: Any,
        ema: Any,
        method: Any,
        steps: Any,
        eta: Any,
        seed: Any,
        n: Any,
        klass: Any,
        guidance: Any,
        progress: Any = gr.Progress(),  # noqa: B008 - Gradio's way to ask for a progress bar
    ) -> Iterator[Any]:
        yield from sample_stream(
            ctx, run, checkpoint, ema, method, steps, eta, seed, n, klass, guidance, progress
        )

    go.click(
        handler(stream),
        [run, ckpt, ema, method, steps, eta, seed, n, klass, guidance],
        [xt, x0, status, grid, files],
        api_name="sample",
        concurrency_limit=lim.concurrency,
        concurrency_id="compute",
    )
    run.change(
        handler(lambda r: _run_changed(ctx, r)), run, [ckpt, klass, guidance, steps], api_visibility="private"
    )


def _class_widgets(lm: Any) -> tuple[Any, Any]:
    import gradio as gr

    k = lm.config.model.num_classes
    klass = gr.Dropdown(
        ["none", *map(str, range(k or 0))], value="none", label="class", visible=k is not None
    )
    guidance = gr.Slider(-1, 10, value=lm.config.sample.guidance, step=0.1, label="guidance w",
                         visible=k is not None)  # fmt: skip
    return klass, guidance


def _run_changed(ctx: Context, run: Any) -> tuple[Any, Any, Any, Any]:
    import gradio as gr

    lm = ctx.runs.model(run)
    k, T = lm.config.model.num_classes, lm.diffusion.num_timesteps
    return (
        gr.update(choices=ctx.runs.checkpoints(run), value="latest"),
        gr.update(choices=["none", *map(str, range(k or 0))], value="none", visible=k is not None),
        gr.update(visible=k is not None),
        gr.update(maximum=min(T, ctx.limits.max_steps), value=min(lm.config.sample.steps or T, T)),
    )
