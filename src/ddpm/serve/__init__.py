"""``ddpm serve``: a local page (Gradio, the optional extra ``ddpm[serve]``) to sample from runs and watch the
chain denoise, edit images, follow a run as it trains and see the forward process.

- :mod:`.limits` — what one request may ask for, checked on the server (:class:`Limits`, :class:`RequestError`);
- :mod:`.runs` — the served runs, their checkpoints, log, config and training grids;
- :mod:`.context` — what the tabs share (runs, limits, scratch space, image conversion, error wrapper);
- :mod:`.sample_tab`, :mod:`.edit_tab`, :mod:`.dashboard_tab`, :mod:`.learn_tab` — one tab each;
- :mod:`.app` — the page (:func:`build_app`), :func:`launch` and :func:`serve`.

Nothing here imports gradio until a page is built, so ``import ddpm.serve`` works without it.
"""

from __future__ import annotations

from .app import ServeError, build_app, launch, serve
from .context import Context
from .limits import Limits, RequestError
from .runs import Runs

__all__ = ["Context", "Limits", "RequestError", "Runs", "ServeError", "build_app", "launch", "serve"]
