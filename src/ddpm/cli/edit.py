"""``ddpm edit inpaint|sdedit|invert|interpolate``: edit real images with a trained run (:mod:`ddpm.editing`).

Inputs are PNG/JPEG files, a ``.npz`` batch (``x``: uint8 [N, H, W, C], as ``ddpm sample`` writes), or test images
of the run's own dataset (``--data-images 0:8``). Each command writes one grid PNG, a row per input (input, mask or
noise, results), and with ``--npz FILE`` the results as uint8 ``x`` [N, H, W, C] (``invert`` adds the float noise).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..sampling import METHODS
from .args import (
    UserError,
    _add_common,
    _add_model_source,
    _finite_float,
    _load,
    _positive_int,
    _seed,
    _steps,
)


def _strength(value: str) -> float:
    v = _finite_float(value)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a strength in [0, 1], got {value!r}")
    return v


def _indices(spec: str, n: int) -> list[int]:
    """``a:b`` or ``i,j,k`` → indices into a dataset of ``n`` images."""
    try:
        if ":" in spec:
            a, _, b = spec.partition(":")
            idx = list(range(int(a or 0), int(b) if b else n))
        else:
            idx = [int(v) for v in spec.split(",")]
    except ValueError:
        raise UserError(f"--data-images must be a:b or i,j,…, got {spec!r}") from None
    if not idx or any(not 0 <= i < n for i in idx):
        raise UserError(f"--data-images {spec!r} is empty or outside the {n} test images")
    return idx


def _inputs(args: argparse.Namespace, lm: Any) -> Any:
    """The input images as uint8 [N, C, S, S], checked against the model's image shape."""
    import numpy as np
    import torch

    c, s, _ = lm.image_shape
    if args.data_images:
        from ..data import load

        d = lm.config.data
        real = load(d.name, root=args.data_root or d.root, split="test", image_size=d.image_size)
        x = real.images[_indices(args.data_images, len(real.images))]
        if tuple(x.shape[1:]) != (c, s, s):
            raise UserError(f"the run's test images are {tuple(x.shape[1:])}, the model's {(c, s, s)}")
        return x
    if not args.input:
        raise UserError("give input images: --input FILE.png|FILE.npz … or --data-images a:b")
    batch = []
    for path in map(Path, args.input):
        if path.suffix.lower() == ".npz":
            try:
                with np.load(path, allow_pickle=False) as f:
                    arr = f["x"] if "x" in f.files else None
            except (OSError, ValueError) as e:
                raise UserError(f"{path}: not a readable .npz file ({e})") from None
            if arr is None or arr.dtype != np.uint8 or arr.ndim != 4:
                raise UserError(
                    f"{path}: expected uint8 images [N, H, W, C] under 'x' (as ddpm sample writes)"
                )
            imgs = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
        else:
            imgs = _read(path, s if args.resize else None)[None]
        if imgs.shape[1] != c:
            raise UserError(f"{path}: images with {imgs.shape[1]} channel(s), but the model takes {c}")
        if tuple(imgs.shape[2:]) != (s, s):
            h, w = imgs.shape[2:]
            raise UserError(f"{path}: images are {h}×{w} but the model makes {s}×{s} (pass --resize)")
        batch.append(imgs)
    return torch.cat(batch)


def _read(path: Path, size: int | None) -> Any:
    """One image file as uint8 [C, H, W] (C = 1 for grayscale files, 3 otherwise)."""
    import numpy as np
    import torch

    from ..data import decode_image

    try:
        arr, gray = decode_image(path.read_bytes(), size=size)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for unreadable files
        raise UserError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    arr = np.array(arr[..., :1] if gray else arr)  # a writable copy
    return torch.from_numpy(arr).permute(2, 0, 1)


def _mask(args: argparse.Namespace, size: int) -> Any:
    """``--mask``: a preset name or a PNG (white = known), as float [1, 1, S, S]."""
    import torch

    from ..editing import mask_preset

    spec = args.mask
    if Path(spec).suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"):
        m = _read(Path(spec), None)
        if tuple(m.shape[1:]) != (size, size):
            raise UserError(f"mask {spec} is {m.shape[1]}×{m.shape[2]} but the images are {size}×{size}")
        return (m[:1] > 127).float()[None]
    return mask_preset(spec, (size, size), torch.Generator().manual_seed(args.seed))


def _model(args: argparse.Namespace, lm: Any) -> Callable[[Any, Any], Any]:
    """The network as ``model(x_t, t)``: unconditional, or guided towards ``--class`` for any batch size."""
    import torch

    from ..pipeline import model_fn

    k, num_classes = args.class_label, lm.config.model.num_classes
    if k is None:
        return model_fn(lm)
    if num_classes is None:
        raise UserError("--class needs a class-conditional model (trained with model.num_classes)")
    if not 0 <= k < num_classes:
        raise UserError(f"--class {k} is out of range: the model has classes 0..{num_classes - 1}")
    w = lm.config.sample.guidance if args.guidance is None else args.guidance
    return lambda x, t: model_fn(lm, torch.full((x.shape[0],), k, device=x.device), w)(x, t)


def _setup(args: argparse.Namespace) -> tuple[Any, Any, Callable[[Any, Any], Any], Any]:
    """(loaded run, inputs in [−1, 1] [N, C, S, S] on its device, model callable, generator)."""
    import torch

    from ..data import to_float

    lm = _load(args)
    device = next(lm.model.parameters()).device
    x = to_float(_inputs(args, lm)).to(device)
    return lm, x, _model(args, lm), torch.Generator(device).manual_seed(args.seed)


def _finish(args: argparse.Namespace, lm: Any, rows: list[Any], arrays: dict[str, Any]) -> int:
    """Write the grid (one row per entry of ``rows``, each [K, C, H, W] in [−1, 1]) and the optional ``.npz``."""
    import numpy as np
    import torch

    from ..data import to_uint8
    from ..viz import save_grid

    out = Path(args.out) if args.out else Path(args.run or lm.path) / f"edit-{args.edit}.png"
    if out.suffix.lower() != ".png":
        raise UserError(f"--out must end in .png, got {out}")
    grid = save_grid(to_uint8(torch.cat([r.float().cpu() for r in rows])), out, nrow=len(rows[0]))
    print(f"wrote {grid}")
    if args.npz:
        npz = Path(args.npz)
        if npz.suffix != ".npz":
            raise UserError(f"--npz must end in .npz, got {npz}")
        npz.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(npz, **arrays)
        print(f"wrote {npz}")
    return 0


def _hwc(x: Any) -> Any:
    from ..data import to_uint8

    return to_uint8(x.float().cpu()).permute(0, 2, 3, 1).numpy()


def cmd_inpaint(args: argparse.Namespace) -> int:
    import torch

    from ..editing import inpaint

    lm, x, model, g = _setup(args)
    mask = _mask(args, x.shape[-1]).to(x.device)
    k = args.samples
    out = inpaint(
        model, lm.diffusion, x.repeat_interleave(k, 0), mask, args.steps, args.jump_length, args.jump_n_sample,
        g, clip_denoised=lm.config.sample.clip_denoised, progress=not args.no_progress,
    )  # fmt: skip
    shown = x * mask  # unknown pixels as mid-gray (0 in [−1, 1])
    rows = [torch.cat([x[i : i + 1], shown[i : i + 1], out[i * k : (i + 1) * k]]) for i in range(len(x))]
    return _finish(args, lm, rows, {"x": _hwc(out), "mask": mask[0, 0].cpu().numpy().astype("uint8")})


def cmd_sdedit(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ..editing import sdedit

    lm, x, model, g = _setup(args)
    if args.coarsen and args.coarsen > 1:  # a rough input: average over F×F blocks, shown as blocks
        x = F.interpolate(F.avg_pool2d(x, args.coarsen, ceil_mode=True), size=x.shape[-2:], mode="nearest")
    sc = lm.config.sample
    method = args.method or sc.method
    results = []
    for strength in args.strength:
        steps = args.steps
        if steps == -1:  # the run's sampling steps, in proportion to the part of the chain SDEdit runs
            steps = None if sc.steps is None else max(1, round(sc.steps * strength))
        kw: dict[str, Any] = {"eta": args.eta} if args.eta is not None and method == "ddim" else {}
        results.append(
            sdedit(model, lm.diffusion, x, strength, method, steps, g, clip_denoised=sc.clip_denoised, **kw)
        )
    rows = [torch.cat([x[i : i + 1]] + [r[i : i + 1] for r in results]) for i in range(len(x))]
    arrays = {"x": _hwc(torch.cat(results)), "strength": np.asarray(args.strength)}
    return _finish(args, lm, rows, arrays)


def cmd_invert(args: argparse.Namespace) -> int:
    import torch

    from ..editing import invert
    from ..sampling import sample

    lm, x, model, _ = _setup(args)
    clip = lm.config.sample.clip_denoised
    noise = invert(model, lm.diffusion, x, args.steps, clip_denoised=clip, progress=not args.no_progress)
    rec = sample(model, lm.diffusion, None, "ddim", steps=args.steps, noise=noise, clip_denoised=clip)
    shown = (noise / 3).clamp(-1, 1)  # x_T ~ N(0, I) at ±3σ
    rows = [torch.cat([x[i : i + 1], shown[i : i + 1], rec[i : i + 1]]) for i in range(len(x))]
    err = (rec - x).abs().amax().item()
    print(f"inverted {len(x)} image(s) with {args.steps} DDIM steps; reconstruction max |error| {err:.4f}")
    return _finish(args, lm, rows, {"noise": noise.float().cpu().numpy(), "x": _hwc(rec)})


def cmd_interpolate(args: argparse.Namespace) -> int:
    import torch

    from ..editing import interpolate

    lm, x, model, _ = _setup(args)
    if len(x) != 2:
        raise UserError(f"interpolate takes exactly two images, got {len(x)}")
    clip = lm.config.sample.clip_denoised
    frames = interpolate(model, lm.diffusion, x[:1], x[1:], args.frames, args.steps, clip_denoised=clip)[:, 0]
    return _finish(args, lm, [torch.cat([x[:1], frames, x[1:]])], {"x": _hwc(frames)})


def register(sub: Any) -> None:
    """Add ``ddpm edit`` and its sub-commands to the ``ddpm`` parser."""
    from .args import _Parser

    e = sub.add_parser("edit", help="inpaint, SDEdit, invert or interpolate real images with a trained run")
    cmds = e.add_subparsers(dest="edit", metavar="EDIT", parser_class=_Parser, required=True)

    def common(name: str, help: str, steps: int | None) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = cmds.add_parser(name, help=help)
        _add_model_source(p)
        p.add_argument("--input", nargs="+", metavar="FILE", help="PNG/JPEG images or .npz batches")
        p.add_argument("--data-images", metavar="A:B|I,J", help="test images of the run's dataset instead")
        p.add_argument("--data-root", help="where the run's dataset lies (with --data-images)")
        p.add_argument("--resize", action="store_true", help="resize image files to the model's size")
        default = "the run's sampling steps × strength" if steps == -1 else steps
        p.add_argument("--steps", type=_steps, default=steps, help=f"sampling steps (default {default})")
        p.add_argument("--seed", type=_seed, default=0)
        p.add_argument("--class", dest="class_label", type=int, help="class for a class-conditional model")
        p.add_argument("--guidance", type=_finite_float, help="classifier-free guidance scale w")
        p.add_argument("--out", help="grid PNG (default RUN/edit-COMMAND.png)")
        p.add_argument("--npz", help="also write the results as .npz (uint8 'x' [N,H,W,C])")
        p.add_argument("--no-progress", action="store_true")
        _add_common(p)
        return p

    p = common("inpaint", "RePaint: fill in the masked pixels", 100)
    p.add_argument("--mask", required=True, help="mask PNG (white: known) or left-half, right-half, top-half, "
                   "bottom-half, center, outside-center, random:P")  # fmt: skip
    p.add_argument("--samples", type=_positive_int, default=1, help="completions per image")
    p.add_argument("--jump-length", type=_positive_int, default=10, help="RePaint's jump length (grid steps)")
    p.add_argument("--jump-n-sample", type=_positive_int, default=10, help="RePaint's resamplings (1: none)")
    p.set_defaults(func=cmd_inpaint)

    p = common("sdedit", "SDEdit: noise to a strength, then sample back", -1)
    p.add_argument("--strength", type=_strength, nargs="+", required=True, help="one or more in [0, 1]")
    p.add_argument("--method", choices=sorted(METHODS))
    p.add_argument("--eta", type=_finite_float, help="DDIM η")
    p.add_argument("--coarsen", type=_positive_int, help="average the input over F×F blocks first")
    p.set_defaults(func=cmd_sdedit)

    p = common("invert", "DDIM inversion: images to noise, and the reconstruction", 50)
    p.set_defaults(func=cmd_invert)

    p = common("interpolate", "slerp between the DDIM noises of two images", 50)
    p.add_argument("--frames", type=_positive_int, default=8, help="images along the path, ends included")
    p.set_defaults(func=cmd_interpolate)
