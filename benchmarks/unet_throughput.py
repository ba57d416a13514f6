"""The `ddpm-cifar10` U-Net against diffusers' `UNet2DModel` of the identical architecture, side by side.

    python benchmarks/unet_throughput.py                 # batch 32, 3 timed repetitions (a few minutes on 2 cores)
    python benchmarks/unet_throughput.py --quick         # batch 8, 1 repetition, small sampling batch
    python benchmarks/unet_throughput.py --batch 64 --iters 5 --threads 2 --json out.json

Both networks are google/ddpm-cifar10-32 (35,746,307 parameters, Ho et al. 2020), built in this process with the
same weights (diffusers' random initialisation converted into ours with `ddpm.interop.diffusers`), fed the same
batch at the same precision. For every configuration (fp32 / bf16 autocast × NCHW / channels_last) it measures

* training img/s: forward + MSE loss + backward + AdamW step (foreach on CPU, fused on CUDA), train mode
  (dropout 0.1 in both);
* inference img/s: forward in eval mode under `torch.inference_mode`;
* peak memory of both, each network alone in a fresh subprocess per configuration: on the CPU the peak bytes of
  tensors alive during an inference pass / a training step (optimizer state in place), counted by a dispatch
  mode like CUDA's `max_memory_allocated` and so independent of the allocator, plus the rise of the resident set
  size (VmHWM after resetting it through /proc/self/clear_refs; noisy: glibc keeps freed memory); on CUDA
  `torch.cuda.max_memory_allocated` above the allocation before the step;
* achieved FLOP/s — the architecture's forward cost (counted with `torch.utils.flop_counter.FlopCounterMode` on
  diffusers' network: 12.1 GFLOP per 32×32 image; a training step counts 3×) times img/s — against the machine's
  matmul peak for the same dtype, measured here in the same run.

Repetitions are interleaved (ours, theirs, ours, theirs, …) so that a shared, noisy machine affects both alike;
the table reports medians and the ratio ours/theirs (> 1: ours is faster or, for memory, theirs uses more).
Sampling throughput at batch 256 (1,000-step ancestral DDPM, 20-step DPM-Solver++(2M)) is extrapolated from a
few timed network evaluations per sampler, each model at its faster memory format; the printout says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddpm.interop.diffusers import unet_config_to_diffusers, unet_from_diffusers_state_dict  # noqa: E402
from ddpm.nn import presets  # noqa: E402

FORMATS = ("nchw", "channels_last")
PRECISIONS = ("fp32", "bf16")
MODELS = ("ours", "diffusers")


# ---------------------------------------------------------------------------------------------- models
def build(
    device: torch.device, fmt: str, seed: int = 0, only: str | None = None
) -> dict[str, torch.nn.Module]:
    """Both networks with identical weights (or just ``only``, randomly initialised), in ``fmt`` memory format."""
    import diffusers

    ours = presets.unet("ddpm-cifar10")
    torch.manual_seed(seed)
    models: dict[str, torch.nn.Module] = {}
    if only != "ours":
        models["diffusers"] = diffusers.UNet2DModel(**unet_config_to_diffusers(ours.config))
    if only is None:
        ours.load_state_dict(unet_from_diffusers_state_dict(models["diffusers"].state_dict(), ours.config))
    if only != "diffusers":
        models["ours"] = ours
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    return {k: models[k].to(device=device, memory_format=mf) for k in MODELS if k in models}


def forward_fn(name: str, model: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == "ours":
        return model
    return lambda x, t: model(x, t, return_dict=False)[0]


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def make_optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    kind = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(model.parameters(), lr=2e-4, **kind)


def make_batch(batch: int, device: torch.device, fmt: str, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    noise = torch.randn(batch, 3, 32, 32, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    return {
        "x": x.to(device).contiguous(memory_format=mf),
        "noise": noise.to(device).contiguous(memory_format=mf),
        "t": t.to(device),
    }


def train_step(fn: Callable[..., torch.Tensor], model: torch.nn.Module, opt: torch.optim.Optimizer,
               b: dict[str, torch.Tensor], precision: str, device: torch.device) -> None:  # fmt: skip
    model.train()
    opt.zero_grad(set_to_none=True)
    with autocast(precision, device):
        out = fn(b["x"], b["t"])
    loss = (out.float() - b["noise"]).square().mean()
    loss.backward()
    opt.step()


def infer_step(fn: Callable[..., torch.Tensor], model: torch.nn.Module, b: dict[str, torch.Tensor],
               precision: str, device: torch.device) -> None:  # fmt: skip
    model.eval()
    with torch.inference_mode(), autocast(precision, device):
        fn(b["x"], b["t"])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------- machine
def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best FLOP/s of an n×n×n matrix product, as ``torch.mm`` and (CPU) as a oneDNN 1×1 convolution.

    On the CPU both matter: ``torch.mm`` in float32 goes to MKL (slow on non-Intel CPUs), the networks'
    convolutions go to oneDNN; the better of the two is the machine's practical peak.
    """
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    candidates = [lambda: a @ b]
    if device.type == "cpu":  # [16, n, h, w] channels_last ⊛ [n, n, 1, 1]: a GEMM with M = 16·h·w = n
        x = torch.randn(16, n, 8, n // 128).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(n, n, 1, 1).to(dtype).contiguous(memory_format=torch.channels_last)
        candidates.append(lambda: torch.nn.functional.conv2d(x, w))
    best = float("inf")
    for fn in candidates:
        fn()
        for _ in range(reps):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def forward_flops(models: dict[str, torch.nn.Module], device: torch.device) -> dict[str, float]:
    """FLOPs of one 32×32 image's forward pass as FlopCounterMode counts them (multiply-add = 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    x, t = torch.randn(1, 3, 32, 32, device=device), torch.tensor([10], device=device)
    for name, model in models.items():
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            forward_fn(name, model)(x, t)
        out[name] = float(counter.get_total_flops())
    return out


# ---------------------------------------------------------------------------------------------- throughput
def time_step(name: str, models: dict[str, torch.nn.Module], opts: dict[str, torch.optim.Optimizer],
              batch: dict[str, torch.Tensor], precision: str, mode: str, device: torch.device) -> float:  # fmt: skip
    """Seconds for one training step or one inference pass of ``models[name]``."""
    fn, model = forward_fn(name, models[name]), models[name]
    sync(device)
    t0 = time.perf_counter()
    if mode == "train":
        train_step(fn, model, opts[name], batch, precision, device)
    else:
        infer_step(fn, model, batch, precision, device)
    sync(device)
    return time.perf_counter() - t0


def throughput(args: argparse.Namespace, device: torch.device) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    for fmt in args.formats:
        models = build(device, fmt)
        if "flops" not in extra:
            extra["flops"] = forward_flops(models, device)
            xb = make_batch(2, device, "nchw")
            with torch.no_grad():
                a = forward_fn("ours", models["ours"].eval())(xb["x"], xb["t"])
                b = forward_fn("diffusers", models["diffusers"].eval())(xb["x"], xb["t"])
            extra["max_abs_diff_fp32"] = float((a - b).abs().max())
        opts = {k: make_optimizer(m, device) for k, m in models.items()}
        batch = make_batch(args.batch, device, fmt)
        for precision in args.precisions:
            for mode in ("train", "infer"):
                times: dict[str, list[float]] = {k: [] for k in MODELS}

                step = (models, opts, batch, precision, mode, device)
                for name in MODELS:  # warm-up (kernel selection, optimizer state, caches)
                    time_step(name, *step)
                for rep in range(args.iters):
                    order = MODELS if rep % 2 == 0 else MODELS[::-1]
                    for name in order:
                        times[name].append(time_step(name, *step))
                row = {"mode": mode, "precision": precision, "format": fmt, "batch": args.batch}
                for name in MODELS:
                    med = statistics.median(times[name])
                    row[f"{name}_img_s"] = args.batch / med
                    row[f"{name}_times_s"] = times[name]
                row["ratio"] = row["ours_img_s"] / row["diffusers_img_s"]
                rows.append(row)
                print(
                    f"  {mode:5s} {precision} {fmt:13s} ours {row['ours_img_s']:8.2f} img/s   "
                    f"diffusers {row['diffusers_img_s']:8.2f} img/s   ×{row['ratio']:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
        del models, opts, batch
    return rows, extra


# ---------------------------------------------------------------------------------------------- memory
def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storages alive during the block, counting those created in it (activations, saved
    tensors, gradients, temporaries): CPU's counterpart of ``torch.cuda.max_memory_allocated``, deterministic and
    independent of the allocator. Storages already alive on entry (weights, optimizer state) are not counted."""

    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.refs: dict[int, tuple[Any, int]] = {}
        self.live = self.peak = 0
        # views of tensors that existed before (e.g. weights unbound into taps) are not new memory
        self.existing = {t.untyped_storage().data_ptr() for t in existing}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._pytree import tree_leaves

        out = func(*args, **(kwargs or {}))
        for key, (ref, n) in list(self.refs.items()):
            if ref.expired():
                del self.refs[key]
                self.live -= n
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.refs and key not in self.existing:
                    self.refs[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        return out


def memory_worker(name: str, fmt: str, precision: str, batch: int, device: torch.device) -> dict[str, Any]:
    """Peak memory of one inference pass and of a training step with the optimizer state in place, for one
    network built alone in a fresh process (run as a subprocess per configuration)."""
    model = build(device, fmt, only=name)[name]  # only this network ever lived in the process
    fn, opt, b = forward_fn(name, model), make_optimizer(model, device), make_batch(batch, device, fmt)
    out: dict[str, Any] = {"model": name, "format": fmt, "precision": precision}
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        infer_step(fn, model, b, precision, device)
        out["infer_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        train_step(fn, model, opt, b, precision, device)  # creates the optimizer state
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        train_step(fn, model, opt, b, precision, device)
        out["train_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        return out
    # Resident set size: the rise of the peak (VmHWM, reset through /proc/self/clear_refs) above the RSS before.
    base = _rss_kb("VmRSS")
    out["exact_peak"] = _reset_peak_rss()  # without it VmHWM may include the start-up's peak
    infer_step(fn, model, b, precision, device)
    out["infer_rss_mb"] = (_rss_kb("VmHWM") - base) / 1024
    _reset_peak_rss()
    train_step(fn, model, opt, b, precision, device)

    def existing() -> list[torch.Tensor]:
        state = [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
        return [*model.parameters(), *model.buffers(), *state, *b.values()]

    with LiveTensorBytes(existing()) as live:  # the second step: optimizer state in place, tensors counted
        train_step(fn, model, opt, b, precision, device)
    out["train_rss_mb"] = (_rss_kb("VmHWM") - base) / 1024
    out["train_mb"] = live.peak / 2**20
    with LiveTensorBytes(existing()) as live:
        infer_step(fn, model, b, precision, device)
    out["infer_mb"] = live.peak / 2**20
    return out


def memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for fmt in args.formats:
        for precision in args.precisions:
            row: dict[str, Any] = {"format": fmt, "precision": precision}
            for name in MODELS:
                cmd = [
                    sys.executable,
                    __file__,
                    "--memory-worker",
                    name,
                    fmt,
                    precision,
                    "--batch",
                    str(args.batch),
                ]
                cmd += ["--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
                res = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if res.returncode != 0:
                    raise RuntimeError(f"memory worker failed: {res.stderr.strip().splitlines()[-1:]}")
                data = json.loads(res.stdout.strip().splitlines()[-1])
                for key in ("train_mb", "infer_mb", "train_rss_mb", "infer_rss_mb"):
                    if key in data:
                        row[f"{name}_{key}"] = data[key]
            print(
                f"  memory {precision} {fmt:13s} train ours {row['ours_train_mb']:.0f} MB / diffusers "
                f"{row['diffusers_train_mb']:.0f} MB; inference {row['ours_infer_mb']:.0f} / "
                f"{row['diffusers_infer_mb']:.0f} MB",
                file=sys.stderr,
                flush=True,
            )
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- sampling
class _Enough(Exception):
    pass


def _timed_evals(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], k: int, device: torch.device):  # type: ignore[no-untyped-def]
    """Wrap ``fn`` to record the time at each call and stop the sampler after 1 + k calls have finished."""
    stamps: list[float] = []

    def wrapped(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sync(device)
        stamps.append(time.perf_counter())
        if len(stamps) > k + 1:
            raise _Enough
        return fn(x, t)

    return wrapped, stamps


def sampling(args: argparse.Namespace, device: torch.device, fmts: dict[str, str]) -> list[dict[str, Any]]:
    """Seconds per sampler step at batch ``args.sample_batch`` (network + update), extrapolated to whole runs."""
    import diffusers

    from ddpm.config import DiffusionConfig
    from ddpm.sampling import sample
    from ddpm.train import build_diffusion

    diffusion = build_diffusion(DiffusionConfig())
    n, k, precision = args.sample_batch, args.sample_steps, "bf16" if "bf16" in args.precisions else "fp32"
    models = {name: build(device, fmts[name], only=name)[name].eval() for name in MODELS}
    rows = []
    for method, total in (("ddpm", 1000), ("dpmpp_2m", 20)):
        row: dict[str, Any] = {"method": method, "steps": total, "batch": n, "precision": precision}
        for name in MODELS:
            fn = forward_fn(name, models[name])
            mf = torch.channels_last if fmts[name] == "channels_last" else torch.contiguous_format
            x = torch.randn(n, 3, 32, 32, device=device).contiguous(memory_format=mf)
            wrapped, stamps = _timed_evals(fn, k, device)
            with contextlib.suppress(_Enough), torch.inference_mode(), autocast(precision, device):
                if name == "ours":
                    steps = None if method == "ddpm" else total
                    sample(wrapped, diffusion, None, method=method, steps=steps, noise=x)
                else:
                    if method == "ddpm":
                        sched: Any = diffusers.DDPMScheduler(num_train_timesteps=1000)
                    else:
                        sched = diffusers.DPMSolverMultistepScheduler(
                            num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2
                        )
                    sched.set_timesteps(total)
                    for t in sched.timesteps:
                        out = wrapped(x, t.expand(n).to(device))
                        x = sched.step(out, t, x).prev_sample
            per_step = (stamps[-1] - stamps[1]) / (len(stamps) - 2)
            row[f"{name}_s_per_step"] = per_step
            row[f"{name}_img_s"] = n / (per_step * total)
            row[f"{name}_format"] = fmts[name]
        row["ratio"] = row["ours_img_s"] / row["diffusers_img_s"]
        rows.append(row)
        print(
            f"  sampling {method} ({total} steps, batch {n}): ours {row['ours_img_s']:.3f} img/s "
            f"({row['ours_s_per_step']:.2f} s/step), diffusers {row['diffusers_img_s']:.3f} img/s ×{row['ratio']:.2f}",
            file=sys.stderr,
            flush=True,
        )
    return rows


# ---------------------------------------------------------------------------------------------- report
def report(result: dict[str, Any]) -> str:
    peaks, flops = result["matmul_peak"], result["flops"]
    nominal = flops["diffusers"]
    lines = [
        f"device: {result['device']}, threads: {result['threads']}, torch {result['torch']}, "
        f"diffusers {result['diffusers']}, load average {result['load_before']} → {result['load_after']}",
        f"matmul peak (best of torch.mm and a oneDNN 1×1 conv, 2048³): fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e12:.3f} TFLOP/s",
        f"forward cost per image (FlopCounterMode): diffusers {flops['diffusers'] / 1e9:.2f} GFLOP, ours "
        f"{flops['ours'] / 1e9:.2f} GFLOP executed (nearest-upsample+conv done as a 2×2-tap transposed conv); "
        f"FLOP/s below use {nominal / 1e9:.2f} GFLOP for both (×3 for training)",
        f"same weights: max |ours − diffusers| in fp32 = {result['max_abs_diff_fp32']:.1e}",
        "",
        f"{'mode':6s}{'prec':6s}{'format':15s}{'ours img/s':>12s}{'diff. img/s':>13s}{'ratio':>8s}"
        f"{'ours TFLOP/s (%peak)':>23s}{'diff. TFLOP/s (%peak)':>24s}",
    ]
    for r in result["throughput"]:
        mult = 3 if r["mode"] == "train" else 1
        peak = peaks[r["precision"]]
        cells = []
        for name in MODELS:
            fps = r[f"{name}_img_s"] * nominal * mult
            cells.append(f"{fps / 1e12:.3f} ({100 * fps / peak:4.1f}%)")
        lines.append(
            f"{r['mode']:6s}{r['precision']:6s}{r['format']:15s}{r['ours_img_s']:12.2f}{r['diffusers_img_s']:13.2f}"
            f"{r['ratio']:8.2f}{cells[0]:>23s}{cells[1]:>24s}"
        )
    best = {}
    for mode in ("train", "infer"):
        for prec in result["precisions"]:
            sel = [r for r in result["throughput"] if r["mode"] == mode and r["precision"] == prec]
            if sel:
                o = max(r["ours_img_s"] for r in sel)
                d = max(r["diffusers_img_s"] for r in sel)
                best[f"{mode} {prec}"] = o / d
    lines.append(
        "best format of each vs best of the other: " + ", ".join(f"{k} ×{v:.2f}" for k, v in best.items())
    )
    if result.get("memory"):
        cpu = "ours_train_rss_mb" in result["memory"][0]
        what = "peak tensor memory of a step, MB" if cpu else "peak CUDA memory of a step, MB"
        lines += [
            "",
            f"{what:34s}{'ours':>8s}{'diff.':>8s}{'ratio':>8s}"
            + ("   RSS rise, MB: ours / diff. (*)" if cpu else ""),
        ]
        for r in result["memory"]:
            for mode in ("train", "infer"):
                o, d = r[f"ours_{mode}_mb"], r[f"diffusers_{mode}_mb"]
                label = f"{mode} {r['precision']} {r['format']}"
                line = f"{label:34s}{o:8.0f}{d:8.0f}{o / d if d else float('nan'):8.2f}"
                if cpu:
                    line += f"   {r[f'ours_{mode}_rss_mb']:6.0f} / {r[f'diffusers_{mode}_rss_mb']:.0f}"
                lines.append(line)
        if cpu:
            lines.append(
                "(*) peak resident set size above the built model, from a cold process: includes one-time oneDNN "
                "kernels and primitive caches and whatever glibc keeps; the tensor columns are the per-step measure"
            )
    if result.get("sampling"):
        lines += ["", "sampling (extrapolated from a few timed steps per sampler; network + sampler update):"]
        for r in result["sampling"]:
            lines.append(
                f"  {r['method']:9s}{r['steps']:5d} steps, batch {r['batch']}, {r['precision']}: ours "
                f"{r['ours_img_s']:.3f} img/s ({r['ours_format']}), diffusers {r['diffusers_img_s']:.3f} img/s "
                f"({r['diffusers_format']}), ×{r['ratio']:.2f}"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=None, help="images per step (default 32; --quick: 8)")
    ap.add_argument(
        "--iters", type=int, default=None, help="timed repetitions per model (default 3; --quick: 1)"
    )
    ap.add_argument("--quick", action="store_true", help="small batch, one repetition, small sampling batch")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--formats", default="nchw,channels_last")
    ap.add_argument(
        "--sample-batch", type=int, default=None, help="sampling batch (default 256; --quick: 32)"
    )
    ap.add_argument("--sample-steps", type=int, default=2, help="timed sampler steps per sampler and model")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-sampling", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument(
        "--memory-worker", nargs=3, metavar=("MODEL", "FORMAT", "PRECISION"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    args.batch = args.batch or (8 if args.quick else 32)
    if args.memory_worker:
        print(json.dumps(memory_worker(*args.memory_worker, args.batch, device)))
        return
    args.iters = args.iters or (1 if args.quick else 3)
    args.sample_batch = args.sample_batch or (32 if args.quick else 256)
    args.precisions = [p for p in args.precisions.split(",") if p]
    args.formats = [f for f in args.formats.split(",") if f]
    import diffusers

    t_start = time.monotonic()
    result: dict[str, Any] = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "batch": args.batch,
        "iters": args.iters,
        "precisions": args.precisions,
    }
    print(f"batch {args.batch}, {args.iters} interleaved repetitions, {device}", file=sys.stderr)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if device.type == "cpu" and os.getloadavg()[0] > 0.5 * cores:
        print(
            f"warning: load average {os.getloadavg()[0]:.1f} on {cores} cores: other processes compete for the CPU, "
            "so absolute numbers are unreliable (ratios less so; --threads 1 suffers least)",
            file=sys.stderr,
        )
    result["matmul_peak"] = {
        "fp32": matmul_peak(device, torch.float32),
        "bf16": matmul_peak(device, torch.bfloat16),
    }
    result["throughput"], extra = throughput(args, device)
    result.update(extra)
    if not args.no_memory:
        result["memory"] = memory(args)
    if not args.no_sampling:
        fmts = {}
        for name in MODELS:
            sel = [r for r in result["throughput"] if r["mode"] == "infer"]
            fmts[name] = max(sel, key=lambda r: r[f"{name}_img_s"])["format"] if sel else "nchw"
        result["sampling"] = sampling(args, device, fmts)
    result["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    result["seconds"] = time.monotonic() - t_start
    print(report(result))
    print(f"({result['seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
