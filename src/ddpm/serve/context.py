"""What every tab of the page shares: the served runs, the limits, a scratch directory for downloads, the
conversions between uploaded pixels and model tensors, and the wrapper that turns a refused request into an
error shown on the page (``gr.Error``) while the server keeps serving."""

from __future__ import annotations

import functools
import inspect
import shutil
import sys
import tempfile
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import CheckpointError
from ..data import DataError, to_float
from ..editing import EditError
from ..pipeline import LoadedModel, PipelineError, model_fn
from .limits import Limits, RequestError, image_array, integer, number
from .runs import Runs

__all__ = [
    "USER_ERRORS",
    "Context",
    "class_labels",
    "guidance_scale",
    "guided_model",
    "handler",
    "render",
    "dataset_image",
    "to_model_input",
    "to_model_mask",
]

USER_ERRORS = (RequestError, EditError, PipelineError, CheckpointError, DataError)


#: The CSS class of image outputs that show model pixels (16–32 px images): displayed enlarged to their box
#: without smoothing (:data:`PAGE_CSS`), so that a 16×16 sample is seen as pixels, not as a smudge.
PIXELS = ["ddpm-pixels"]
PAGE_CSS = (
    ".ddpm-pixels img { image-rendering: pixelated; width: 100% !important; height: 100% !important;"
    " object-fit: contain; }"
)


@dataclass
class Context:
    """The state of one page: runs, limits and a scratch directory removed by :meth:`close`."""

    runs: Runs
    limits: Limits = field(default_factory=Limits)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ddpm-serve-")))

    def scratch(self) -> Path:
        """A fresh directory for one request's downloads."""
        d = self.workdir / uuid.uuid4().hex
        d.mkdir(parents=True)
        return d

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


_MATPLOTLIB = threading.Lock()  # matplotlib's text layout (mathtext of log-scale ticks) is not thread-safe


def render(draw: Callable[[], Any]) -> np.ndarray:
    """The matplotlib ``Figure`` that ``draw()`` returns, drawn to uint8 RGB pixels [H, W, 3] under one lock
    (requests run in threads; the page gets pixels, so no figure is drawn outside the lock)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    with _MATPLOTLIB:
        fig = draw()
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _as_gradio_error(e: BaseException) -> Exception:
    import gradio as gr

    if isinstance(e, gr.Error):
        return e
    if isinstance(e, USER_ERRORS):
        return gr.Error(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    traceback.print_exception(
        e, file=sys.stderr
    )  # the server's log keeps the traceback; the page gets one line
    return gr.Error(f"internal error ({type(e).__name__}: {e}); the server keeps serving")


def handler(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a function or a generator function) with refused requests shown as one ``gr.Error`` line."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args: Any, **kw: Any) -> Any:
            try:
                yield from fn(*args, **kw)
            except Exception as e:  # noqa: BLE001 - every failure ends this request only
                raise _as_gradio_error(e) from None

        return gen

    @functools.wraps(fn)
    def call(*args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - every failure ends this request only
            raise _as_gradio_error(e) from None

    return call


def _square(im: Any, size: int, resample: Any) -> Any:
    """A PIL image centre-cropped to a square and resized to ``size`` × ``size``."""
    w, h = im.size
    if w != h:
        m = min(w, h)
        im = im.crop(((w - m) // 2, (h - m) // 2, (w - m) // 2 + m, (h - m) // 2 + m))
    return im if im.size == (size, size) else im.resize((size, size), resample)


def to_model_input(name: str, value: Any, lm: LoadedModel, limits: Limits) -> Tensor:
    """An uploaded image (uint8 [H, W] or [H, W, C]) as the model's input [1, C, S, S] in [−1, 1]: gray or RGB
    as the model takes, centre-cropped to a square and resized (bicubic) to its size S."""
    from PIL import Image

    arr = image_array(name, value, limits)
    c, s, _ = lm.image_shape
    im = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    im = _square(im.convert("L" if c == 1 else "RGB"), s, Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.array(im)).reshape(s, s, -1).permute(2, 0, 1)[None]
    return to_float(x).to(next(lm.model.parameters()).device)


def to_model_mask(name: str, known: np.ndarray, lm: LoadedModel) -> Tensor:
    """A boolean [H, W] array (True: known pixel) cropped and resized like :func:`to_model_input` (nearest), as
    the inpainting mask [1, 1, S, S] (1: known)."""
    from PIL import Image

    s = lm.image_shape[1]
    im = _square(Image.fromarray(known.astype(np.uint8) * 255), s, Image.Resampling.NEAREST)
    m = torch.from_numpy(np.array(im) > 127).float()[None, None]
    return m.to(next(lm.model.parameters()).device)


def dataset_image(ctx: Context, run: Any, index: Any) -> Any:
    """Test image ``index`` of the run's own dataset as uint8 [H, W] (gray) or [H, W, 3]."""
    from ..data import load

    lm = ctx.runs.model(run)
    d = lm.config.data
    data = load(d.name, root=d.root, split="test", image_size=d.image_size)
    i = integer("index", index, 0, len(data.images) - 1)
    x = data.images[i].permute(1, 2, 0).numpy()
    return x[..., 0] if x.shape[2] == 1 else x


def class_labels(lm: LoadedModel, value: Any, n: int) -> Tensor | None:
    """``value`` ("none"/None, or a class index of a class-conditional model) as labels [n], or None."""
    k = lm.config.model.num_classes
    if value in (None, "", "none"):
        return None
    if k is None:
        raise RequestError("class: this run is not class-conditional")
    try:
        label = integer("class", int(value) if isinstance(value, str) else value, 0, k - 1)
    except ValueError:
        raise RequestError(f"class must be 'none' or an integer in 0..{k - 1}, got {value!r}") from None
    return torch.full((n,), label, dtype=torch.long)


def guidance_scale(value: Any) -> float:
    """A classifier-free guidance scale w in [−1, 20] (−1: the unconditional model, 0: plain conditional)."""
    return number("guidance", value, -1.0, 20.0)


def guided_model(lm: LoadedModel, klass: Any, guidance: Any) -> Callable[[Tensor, Tensor], Tensor]:
    """The network as ``model(x_t, t)`` for any batch size: unconditional, or guided towards ``klass``."""
    w = guidance_scale(guidance)
    if class_labels(lm, klass, 1) is None:
        return model_fn(lm)
    label = int(klass)
    return lambda x, t: model_fn(lm, torch.full((x.shape[0],), label, device=x.device), w)(x, t)
