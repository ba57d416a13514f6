"""The page: a ``gr.Blocks`` with the Sample, Edit, Run dashboard and Learn tabs over the served runs, queued
(a bounded queue, a few requests computed at a time), bound to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .context import PAGE_CSS, Context
from .limits import Limits, is_local
from .runs import Runs

__all__ = ["ServeError", "build_app", "launch", "serve"]


class ServeError(RuntimeError):
    """The page cannot start (gradio is not installed)."""


def _gradio() -> Any:
    try:
        import gradio as gr
    except ImportError:
        raise ServeError("ddpm serve needs gradio: pip install 'ddpm[serve]'") from None
    return gr


def build_app(ctx: Context) -> Any:
    """The page's ``gr.Blocks`` for ``ctx`` (queued; not launched)."""
    gr = _gradio()
    _preload()
    from . import dashboard_tab, edit_tab, learn_tab, sample_tab

    with gr.Blocks(title="ddpm serve", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"## ddpm serve · {', '.join(ctx.runs.labels)}")
        with gr.Tab("Sample", id="sample"):
            sample_tab.build(ctx, demo)
        with gr.Tab("Edit", id="edit"):
            edit_tab.build(ctx, demo)
        with gr.Tab("Run dashboard", id="dashboard"):
            dashboard_tab.build(ctx, demo)
        with gr.Tab("Learn", id="learn"):
            learn_tab.build(ctx, demo)
    demo.queue(default_concurrency_limit=ctx.limits.concurrency, max_size=ctx.limits.queue_size)
    return demo


def _preload() -> None:
    """Import what the handlers import lazily, once, before requests run in threads: two threads importing
    torchvision for the first time at once can see it half-initialised."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import torchvision.transforms.v2.functional  # noqa: F401
    import torchvision.utils  # noqa: F401
    from PIL import Image  # noqa: F401


def launch(
    ctx: Context, host: str = "127.0.0.1", port: int = 7860, block: bool = True, quiet: bool = False
) -> Any:
    """Build and start the page on ``host:port``; with ``block`` serve until interrupted, else return the app
    (``app.close()`` stops it). A host other than a loopback address warns: the page is then reachable from
    other machines."""
    gr = _gradio()
    if not is_local(host):
        warnings.warn(
            f"serving on {host}: the page is reachable from other machines (default 127.0.0.1)", stacklevel=2
        )
    demo = build_app(ctx)
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        quiet=quiet,
        show_error=True,
        footer_links=["api"],
        allowed_paths=[str(ctx.workdir)],
        theme=gr.themes.Soft(),
        css=PAGE_CSS,
    )
    return demo


def serve(
    runs: Sequence[str | Path],
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str = "auto",
    limits: Limits | None = None,
) -> None:
    """``ddpm serve``: load ``runs`` (a missing or corrupt run raises here, before anything is served) and
    serve the page until interrupted."""
    _gradio()
    ctx = Context(Runs(list(runs), device=device), limits or Limits())
    print(f"ddpm serve: http://{host if ':' not in host else f'[{host}]'}:{port}", file=sys.stderr)
    try:
        launch(ctx, host, port, block=True, quiet=True)
    finally:
        ctx.close()
