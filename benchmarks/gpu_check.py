"""The GPU path, checked in one prepared command: training in bf16 and fp16, the peer, sampling, DDP, CUDA tests.

    python benchmarks/gpu_check.py                    # on a CUDA machine (sized for < 8 minutes on one H200)
    python benchmarks/gpu_check.py --steps 500 --out runs/gpu-check --data path/to/cifar10-jpeg.zip
    python benchmarks/gpu_check.py --smoke            # the same logic on the CPU with a tiny network, < 1 min

Parts, each in a subprocess of its own with a time limit (a failing, crashing or hanging part is reported and
the others go on; the whole run keeps to --budget seconds):

* ``train-bf16``, ``train-fp16``: the `cifar10-ddpm` recipe (Ho et al.'s 35.7M U-Net, batch 128) trained by
  :class:`ddpm.train.Trainer` for --steps steps under bf16 autocast / fp16 autocast with a GradScaler; img/s
  after --warmup steps (timed between ``torch.cuda.synchronize`` calls), peak CUDA memory, the time to draw a
  batch, and whether every loss is finite and the last quarter's mean is below the first quarter's. The data are
  uint8 images held on the GPU (batches are indexed and flipped there): CIFAR-10 from --data, else synthetic
  CIFAR-shaped images (coloured Gaussian blobs, 32×32 RGB). The recipe's 5,000 warm-up steps become --steps/5.
* ``peer-bf16``, ``peer-fp16``: our network against diffusers' ``UNet2DModel`` of the same architecture (the
  config from :func:`ddpm.interop.diffusers.unet_config_to_diffusers`, the same weights), same batch, same
  precision: a training step (forward, MSE, backward, fused AdamW; GradScaler in fp16) and an inference pass,
  interleaved repetitions, medians, ratio ours/diffusers (> 1: ours is faster).
* ``sample``: 64 images from the bf16 run's raw weights (its EMA, 0.9999 without warm-up, has barely moved off
  the initial weights in a few hundred steps) with 50 DDIM steps and with the recipe's 1,000 ancestral steps,
  timed; both grids are saved.
* ``ddp``: one Trainer step under ``torchrun`` with NCCL, world size 2 when there are 2 GPUs or more, else 1
  (the Trainer wraps its network in DDP for several ranks only; with one, this check wraps it itself), then a
  collective checkpoint save.
* ``tests``: the tests that need CUDA (tests/test_cuda.py and the fp16 GradScaler test of test_reliability.py).

Writes OUT/gpu_check.json and OUT/gpu_check.md (the table, also printed) and the sample grids; OUT is --out,
else $OUT, else runs/gpu-check. Runs and checkpoints go to --work (default: a temporary directory, removed at
the end). Exits 1 when a part failed. Without CUDA only --smoke runs; the parts that need CUDA are skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddpm.builders import resolve_config  # noqa: E402
from ddpm.config import Config, apply_overrides  # noqa: E402
from ddpm.data import Batches, ImageData, load_cifar10, load_gaussian_blobs  # noqa: E402
from ddpm.recipes import get_recipe  # noqa: E402
from ddpm.runtime import autocast_context  # noqa: E402

RECIPE = "cifar10-ddpm"
# --smoke: the recipe with a network small enough for a CPU (same block types, so diffusers can mirror it)
SMOKE_OVERRIDES = [
    "model.base_channels=8",
    "model.channel_mult=1,2",
    "model.num_res_blocks=1",
    "model.norm_groups=4",
    "model.attention_resolutions=16",
    "train.lr=1e-3",  # so that 16 steps show the loss falling
]
CIFAR_ZIPS = [
    ROOT.parent / "shared/data/cifar10/cifar10-jpeg.zip",
    ROOT / "shared/data/cifar10/cifar10-jpeg.zip",
]
CUDA_TESTS = [
    "tests/test_cuda.py",
    "tests/test_reliability.py::test_fp16_overflow_on_cuda_is_handled_by_the_scaler",
]
# (part, needs CUDA, time limit in seconds); in this order, so the sample part finds the bf16 run
PARTS: list[tuple[str, bool, float]] = [
    ("train-bf16", False, 180),
    ("sample", False, 120),
    ("train-fp16", True, 180),
    ("peer-bf16", False, 150),
    ("peer-fp16", True, 150),
    ("ddp", True, 150),
    ("tests", True, 240),
]


# ---------------------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_of() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


def peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def finite_or_none(v: Any) -> Any:
    """JSON has no NaN: non-finite floats become None (recursively)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: finite_or_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [finite_or_none(x) for x in v]
    return v


def train_overrides(args: argparse.Namespace, precision: str, device: torch.device) -> list[str]:
    """What this check changes in the recipe: --steps, --batch, warm-up steps/5, no periodic checkpoints or grids
    (and, with --smoke, a small network)."""
    overrides = [
        f"train.max_steps={args.steps}",
        f"train.batch_size={args.batch}",
        f"train.warmup_steps={max(1, args.steps // 5)}",
        f"train.precision={precision}",
        f"train.device={device.type}",
        "train.checkpoint_every=none",
        "train.sample_every=none",
        "train.threads=none",
        "data.val_fraction=0",
    ]
    return [*overrides, *(SMOKE_OVERRIDES if args.smoke else [])]


def train_config(args: argparse.Namespace, precision: str, device: torch.device) -> Config:
    """The recipe with :func:`train_overrides` applied."""
    return apply_overrides(get_recipe(RECIPE), train_overrides(args, precision, device))


def load_data(args: argparse.Namespace, device: torch.device) -> tuple[ImageData, str]:
    """The training images on ``device`` and where they came from (cached in --work for the later parts)."""
    cache = Path(args.work) / "data.pt"
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        data = ImageData(saved["images"], saved["labels"], [str(i) for i in range(10)], "cifar10")
        return data.to(device), str(saved["source"])
    zips = [Path(args.data)] if args.data not in ("auto", "synthetic") else []
    if args.data == "auto" and not args.smoke:
        zips = [z for z in CIFAR_ZIPS if z.is_file()][:1]
    if zips:
        data = load_cifar10(zips[0], split="train", max_per_class=args.per_class)
        source = f"CIFAR-10 {zips[0].name}: {len(data)} training images ({args.per_class} per class)"
    else:
        n = 256 if args.smoke else 10 * args.per_class
        data = load_gaussian_blobs(image_size=32, channels=3, n=n, seed=0)
        source = f"synthetic: {n} coloured Gaussian blobs, uint8 [N, 3, 32, 32]"
    torch.save({"images": data.images, "labels": data.labels, "source": source}, cache)
    return data.to(device), source


def quarter_means(losses: list[float]) -> tuple[float, float]:
    q = max(1, len(losses) // 4)
    return sum(losses[:q]) / q, sum(losses[-q:]) / q


# ---------------------------------------------------------------------------------------------- parts
def part_train(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    from ddpm.train import Trainer

    device = device_of()
    data, source = load_data(args, device)
    cfg = train_config(args, precision, device)
    batches = Batches(data, args.batch, seed=1, flip=True)
    next(batches)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        next(batches)
    sync(device)
    batch_ms = (time.perf_counter() - t0) / 10 * 1e3
    reset_peak(device)
    tr = Trainer(cfg, Path(args.work) / f"run-{precision}", data=(data, None), progress=False)
    losses: list[float] = []
    skipped, start = 0, 0.0
    for i in range(args.steps):
        if i == args.warmup:
            sync(device)
            start = time.perf_counter()
        out = tr.train_step()
        if out is None:
            skipped += 1
        else:
            losses.append(out["loss"])
    sync(device)
    seconds = time.perf_counter() - start
    timed = args.steps - args.warmup
    first, last = quarter_means(losses) if losses else (math.nan, math.nan)
    result = {
        "precision": tr.precision,
        "device": str(tr.device),
        "data": source,
        "steps": args.steps,
        "batch": args.batch,
        "params": sum(p.numel() for p in tr.model.parameters()),
        "img_per_s": args.batch * timed / seconds,
        "step_ms": seconds / timed * 1e3,
        "batch_draw_ms": batch_ms,
        "peak_mb": peak_mb(device),
        "loss_first_quarter": first,
        "loss_last_quarter": last,
        "loss_final": losses[-1] if losses else math.nan,
        "skipped_steps": skipped,  # fp16: overflowing steps the GradScaler skipped
        "grad_scale": tr.scaler.get_scale() if tr.scaler.is_enabled() else None,
        "overrides": train_overrides(args, precision, device),
    }
    result["checks"] = {
        "losses finite": all(math.isfinite(v) for v in losses) and skipped <= max(10, args.steps // 20),
        "loss decreasing": last < first,
    }
    if precision == "bf16":
        result["checkpoint"] = str(tr.save())
    tr.close()
    return result


def part_peer(args: argparse.Namespace, precision: str) -> dict[str, Any]:
    import diffusers

    from ddpm.interop.diffusers import unet_config_to_diffusers, unet_from_diffusers_state_dict
    from ddpm.nn.unet import UNet

    device = device_of()
    cfg = resolve_config(train_config(args, precision, device), None)
    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(**unet_config_to_diffusers(cfg.model))
    ours = UNet(cfg.model)
    ours.load_state_dict(unet_from_diffusers_state_dict(theirs.state_dict(), cfg.model))
    models: dict[str, torch.nn.Module] = {"ours": ours.to(device), "diffusers": theirs.to(device)}
    fns: dict[str, Callable[..., torch.Tensor]] = {
        "ours": models["ours"],
        "diffusers": lambda x, t: models["diffusers"](x, t, return_dict=False)[0],
    }
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, 32, 32, generator=g).to(device)
    noise = torch.randn(args.batch, 3, 32, 32, generator=g).to(device)
    t = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    # the same function in fp32: without TF32, which cuDNN uses for fp32 convolutions by default
    with (
        torch.no_grad(),
        torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False),
    ):
        for m in models.values():
            m.eval()
        diff = float((fns["ours"](x[:2], t[:2]) - fns["diffusers"](x[:2], t[:2])).abs().max())
    opts = {
        k: torch.optim.AdamW(m.parameters(), lr=2e-4, **fused_or_foreach(device)) for k, m in models.items()
    }
    scalers = {k: torch.amp.GradScaler(device.type, enabled=precision == "fp16") for k in models}

    def train_step(name: str) -> None:
        models[name].train()
        opts[name].zero_grad(set_to_none=True)
        with autocast_context(precision, device):
            out = fns[name](x, t)
        loss = (out.float() - noise).square().mean()
        scalers[name].scale(loss).backward()
        scalers[name].step(opts[name])
        scalers[name].update()

    def infer(name: str) -> None:
        models[name].eval()
        with torch.inference_mode(), autocast_context(precision, device):
            fns[name](x, t)

    result: dict[str, Any] = {"precision": precision, "batch": args.batch, "max_abs_diff_fp32": diff}
    result["diffusers_version"] = diffusers.__version__
    for mode, step in (("train", train_step), ("infer", infer)):
        times: dict[str, list[float]] = {k: [] for k in models}
        for name in models:
            for _ in range(args.peer_warmup):
                step(name)
        for rep in range(args.peer_iters):
            for name in list(models) if rep % 2 == 0 else list(models)[::-1]:
                sync(device)
                t0 = time.perf_counter()
                step(name)
                sync(device)
                times[name].append(time.perf_counter() - t0)
        for name in models:
            med = sorted(times[name])[len(times[name]) // 2]
            result[f"{mode}_{name}_img_per_s"] = args.batch / med
        result[f"{mode}_ratio"] = result[f"{mode}_ours_img_per_s"] / result[f"{mode}_diffusers_img_per_s"]
    for name in models:  # peak memory of one training step of each network alone (optimizer state in place)
        sync(device)
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        reset_peak(device)
        train_step(name)
        sync(device)
        mb = peak_mb(device)
        result[f"train_{name}_peak_mb"] = None if mb is None else mb - base / 2**20
    result["checks"] = {"same network (fp32 outputs agree)": diff < 1e-3}
    return result


def fused_or_foreach(device: torch.device) -> dict[str, bool]:
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def part_sample(args: argparse.Namespace) -> dict[str, Any]:
    from ddpm.pipeline import generate, load_model, save_images

    device = device_of()
    run = Path(args.work) / "run-bf16"
    if not run.is_dir():
        raise RuntimeError("no bf16 run to sample from (the train-bf16 part did not finish)")
    lm = load_model(run, ema=False, device=device.type)
    result: dict[str, Any] = {"n": args.n_samples, "step": lm.step, "weights": "raw (not EMA)"}
    ok = True
    for method, steps, name in (("ddim", args.sample_steps, "ddim"), ("ddpm", args.ancestral_steps, "ddpm")):
        label = f"{name}{steps or lm.diffusion.num_timesteps}"
        sync(device)
        t0 = time.perf_counter()
        x = generate(lm, args.n_samples, method=method, steps=steps, seed=0, batch_size=args.n_samples)
        sync(device)
        result[f"{label}_s"] = time.perf_counter() - t0
        grid = Path(args.out) / f"samples-{label}.png"
        save_images(x, grid)
        result[f"{label}_grid"] = grid.name
        ok &= x.shape == (args.n_samples, 3, 32, 32) and float(x.float().std()) > 0
    result["checks"] = {f"{args.n_samples} images, not constant": ok}
    return result


def part_ddp(args: argparse.Namespace) -> dict[str, Any]:
    """Launch the DDP worker under torchrun (``python -m torch.distributed.run``), collect rank 0's result."""
    world = args.ddp_world or (min(2, torch.cuda.device_count()) if torch.cuda.is_available() else 1)
    out = Path(args.work) / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
    cmd += [__file__, *args.argv, "--ddp-worker", "--work", args.work, "--out", args.out]
    res = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), check=False)
    if res.returncode != 0 or not out.is_file():
        raise RuntimeError(f"torchrun exited {res.returncode}: {(res.stdout + res.stderr)[-1500:]}")
    return json.loads(out.read_text())


def ddp_worker(args: argparse.Namespace) -> None:
    """One rank: join the process group, one Trainer step through DDP, a collective save; rank 0 writes JSON."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ddpm import distributed as dist_lib
    from ddpm.train import Trainer

    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(
        "nccl" if cuda else "gloo", device_id=torch.device("cuda", local) if cuda else None
    )
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        device = torch.device("cuda", local) if cuda else torch.device("cpu")
        cfg = apply_overrides(train_config(args, "bf16", device), [f"train.batch_size={args.batch * world}"])
        data = load_gaussian_blobs(image_size=32, channels=3, n=max(256, 4 * args.batch * world), seed=0)
        tr = Trainer(cfg, Path(args.work) / "run-ddp", data=(data.to(device), None), progress=False)
        wrapped_by = "trainer"
        # One rank: the Trainer trains without DDP; wrap it here to run a DDP step over NCCL anyway.
        if tr.ddp is None:
            ids = [local] if cuda else None
            tr.ddp = DistributedDataParallel(tr.model, device_ids=ids, broadcast_buffers=False)
            wrapped_by = f"this check (world size {world})"
        first = tr.train_step()
        sync(device)
        t0 = time.perf_counter()
        second = tr.train_step()
        sync(device)
        step_s = time.perf_counter() - t0
        total = torch.full((1,), float(rank + 1), device=device)
        dist.all_reduce(total)
        dist_lib.check_replicas(tr.model.parameters())  # raises if the ranks' weights differ
        ckpt = tr.save()  # a collective under several ranks: EMA replicas checked, rank 0 writes
        tr.close()
        if rank == 0:
            losses = [o["loss"] if o else math.nan for o in (first, second)]
            result = {
                "world_size": world,
                "backend": dist.get_backend(),
                "ddp_wrapped_by": wrapped_by,
                "global_batch": args.batch * world,
                "losses": losses,
                "step_s": step_s,
                "checkpoint": str(ckpt),
                "checks": {
                    "all_reduce sums the ranks": float(total) == world * (world + 1) / 2,
                    "the Trainer uses DDP for several ranks": world == 1 or wrapped_by == "trainer",
                    "losses finite": all(math.isfinite(v) for v in losses),
                    "backend nccl (gloo without CUDA)": dist.get_backend() == ("nccl" if cuda else "gloo"),
                },
            }
            (Path(args.work) / "ddp.json").write_text(json.dumps(finite_or_none(result)))
    finally:
        dist.destroy_process_group()


def part_tests(args: argparse.Namespace) -> dict[str, Any]:
    xml = Path(args.work) / "tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TESTS, f"--junitxml={xml}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=child_env(), check=False)
    if not xml.is_file():
        raise RuntimeError(f"pytest exited {res.returncode}: {(res.stdout + res.stderr)[-1500:]}")
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    result = {"passed": passed, **counts, "failed_tests": failed, "pytest_tail": res.stdout[-600:]}
    result["checks"] = {"no failures": not failed and res.returncode == 0, "some ran": passed > 0}
    return result


def child_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def run_part_here(args: argparse.Namespace) -> None:
    """The body of one part's subprocess: run it, write its JSON to --work/parts/NAME.json."""
    name = args.part
    funcs: dict[str, Callable[[], dict[str, Any]]] = {
        "train-bf16": lambda: part_train(args, "bf16"),
        "train-fp16": lambda: part_train(args, "fp16"),
        "peer-bf16": lambda: part_peer(args, "bf16"),
        "peer-fp16": lambda: part_peer(args, "fp16"),
        "sample": lambda: part_sample(args),
        "ddp": lambda: part_ddp(args),
        "tests": lambda: part_tests(args),
    }
    result = funcs[name]()
    result["status"] = "ok" if all(result.get("checks", {}).values()) else "failed"
    (Path(args.work) / "parts" / f"{name}.json").write_text(json.dumps(finite_or_none(result), indent=2))


# ---------------------------------------------------------------------------------------------- driver
def run_part(name: str, args: argparse.Namespace, limit: float) -> dict[str, Any]:
    """``name`` in a fresh process (its own session, so a timeout kills torchrun's workers too)."""
    out = Path(args.work) / "parts" / f"{name}.json"
    log = Path(args.work) / "parts" / f"{name}.log"
    cmd = [sys.executable, __file__, *args.argv, "--part", name, "--work", args.work, "--out", args.out]
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True
        )
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
    seconds = time.monotonic() - t0
    tail = log.read_text(errors="replace")[-1500:]
    if rc is None:
        return {
            "status": "failed",
            "error": f"timed out after {limit:.0f} s",
            "log_tail": tail,
            "seconds": seconds,
        }
    if rc != 0 or not out.is_file():
        last = next((ln for ln in reversed(tail.splitlines()) if ln.strip()), "")
        error = f"exited {rc}: {last.strip()[:300]}"
        return {"status": "failed", "error": error, "log_tail": tail, "seconds": seconds}
    return {**json.loads(out.read_text()), "seconds": seconds}


def summary_cell(name: str, r: dict[str, Any]) -> str:
    """The table's one-line result of a part."""

    def f(v: Any, fmt: str = ".0f") -> str:
        return "–" if v is None else format(v, fmt)

    if r["status"] == "skipped" or "error" in r:
        return str(r.get("reason") or r.get("error"))
    checks = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in r.get("checks", {}).items())
    if name.startswith("train"):
        mem = f"{f(r['peak_mb'] / 1024 if r['peak_mb'] else None, '.1f')} GiB"
        return (
            f"{f(r['img_per_s'])} img/s ({f(r['step_ms'], '.1f')} ms/step, batch draw {f(r['batch_draw_ms'], '.2f')} "
            f"ms), peak {mem}, loss {f(r['loss_first_quarter'], '.3f')} → {f(r['loss_last_quarter'], '.3f')}; "
            + checks
        )
    if name.startswith("peer"):
        return (
            f"train ours {f(r['train_ours_img_per_s'])} / diffusers {f(r['train_diffusers_img_per_s'])} img/s "
            f"(×{f(r['train_ratio'], '.2f')}); inference {f(r['infer_ours_img_per_s'])} / "
            f"{f(r['infer_diffusers_img_per_s'])} (×{f(r['infer_ratio'], '.2f')}); peak train MB "
            f"{f(r['train_ours_peak_mb'])} / {f(r['train_diffusers_peak_mb'])}; {checks}"
        )
    if name == "sample":
        times = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in r.items() if k.endswith("_s") and v is not None)
        return f"{r['n']} images: {times}; {checks}"
    if name == "ddp":
        return f"world {r['world_size']} over {r['backend']}, step {f(r['step_s'], '.3f')} s; {checks}"
    return f"{r['passed']} passed, {r['skipped']} skipped, {r['failures'] + r['errors']} failed; {checks}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"GPU check ({'smoke, ' if result['smoke'] else ''}{result['device']}, torch {result['torch']}, "
        f"CUDA {result['cuda']}, diffusers {result['diffusers']}, {result['steps']} steps at batch "
        f"{result['batch']}, {result['seconds']:.0f} s)",
        "",
        "| part | status | result | s |",
        "|---|---|---|---|",
    ]
    for name, r in result["parts"].items():
        cell = summary_cell(name, r).replace("|", "/").replace("\n", " ")
        lines.append(f"| {name} | {r['status']} | {cell} | {r.get('seconds', 0):.0f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="training steps per precision (300; --smoke: 16)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed first steps (30; --smoke: 4)")
    ap.add_argument("--batch", type=int, default=None, help="images per step (the recipe's 128; --smoke: 8)")
    ap.add_argument(
        "--data", default="auto", help="auto (the CIFAR-10 zip if found), synthetic, or a zip/dir"
    )
    ap.add_argument("--per-class", type=int, default=1000, help="CIFAR-10 images read per class")
    ap.add_argument(
        "--peer-iters", type=int, default=None, help="timed repetitions per network (20; smoke 2)"
    )
    ap.add_argument("--peer-warmup", type=int, default=None, help="untimed repetitions first (5; smoke 1)")
    ap.add_argument("--n-samples", type=int, default=64)
    ap.add_argument("--sample-steps", type=int, default=None, help="DDIM steps (50; --smoke: 5)")
    ap.add_argument("--ancestral-steps", type=int, default=None, help="ancestral steps (all T; --smoke: 5)")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole check")
    ap.add_argument("--only", default=None, help="comma-separated parts to run (default: all)")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny network and sizes: the logic on a CPU in < 1 min"
    )
    ap.add_argument("--out", default=None, help="output directory (default: $OUT, else runs/gpu-check)")
    ap.add_argument("--work", default=None, help="runs and checkpoints (default: a temporary directory)")
    ap.add_argument("--part", default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--ddp-on-cpu", action="store_true", help="without CUDA, run the ddp part over gloo (tests)"
    )
    ap.add_argument(
        "--ddp-world", type=int, default=None, help="ranks (default: 2 with 2 GPUs or more, else 1)"
    )
    ap.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = [a for a in argv]  # forwarded to the parts (their own --part/--work/--out come last and win)
    smoke = args.smoke
    for key, full, small in (
        ("steps", 300, 16),
        ("warmup", 30, 4),
        ("batch", 128, 8),
        ("peer_iters", 20, 2),
        ("peer_warmup", 5, 1),
        ("sample_steps", 50, 5),
        ("ancestral_steps", None, 5),
    ):
        if getattr(args, key) is None:
            setattr(args, key, small if smoke else full)
    args.out = args.out or os.environ.get("OUT") or str(ROOT / "runs" / "gpu-check")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.ddp_worker:
        ddp_worker(args)
        return 0
    if args.part:
        run_part_here(args)
        return 0
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("gpu_check: no CUDA device; --smoke runs the check's logic on the CPU", file=sys.stderr)
        return 2
    if args.warmup >= args.steps:
        print(f"gpu_check: --warmup ({args.warmup}) must be below --steps ({args.steps})", file=sys.stderr)
        return 2
    only = set(args.only.split(",")) if args.only else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    temp = args.work is None
    args.work = args.work or tempfile.mkdtemp(prefix="gpu-check-")
    (Path(args.work) / "parts").mkdir(parents=True, exist_ok=True)
    try:
        import diffusers

        diffusers_version: str | None = diffusers.__version__
    except ImportError:
        diffusers_version = None
    t_start = time.monotonic()
    result: dict[str, Any] = {
        "smoke": args.smoke,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "gpus": torch.cuda.device_count() if cuda else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers_version,
        "recipe": RECIPE,
        "steps": args.steps,
        "batch": args.batch,
        "parts": {},
    }
    try:
        for name, needs_cuda, limit in PARTS:
            left = args.budget - (time.monotonic() - t_start)
            if only is not None and name not in only:
                r: dict[str, Any] = {"status": "skipped", "reason": "not in --only"}
            elif needs_cuda and not cuda and not (name == "ddp" and args.ddp_on_cpu):
                r = {"status": "skipped", "reason": "needs CUDA" + (" (NCCL)" if name == "ddp" else "")}
            elif name.startswith("peer") and diffusers_version is None:
                r = {"status": "skipped", "reason": "diffusers is not installed"}
            elif left < 20:
                r = {"status": "skipped", "reason": f"out of the {args.budget:.0f} s budget"}
            else:
                print(f"[gpu-check] {name} …", file=sys.stderr, flush=True)
                r = run_part(name, args, min(limit, left))
            result["parts"][name] = r
            print(f"[gpu-check] {name}: {r['status']} — {summary_cell(name, r)}", file=sys.stderr, flush=True)
    finally:
        result["seconds"] = time.monotonic() - t_start
        (out / "gpu_check.json").write_text(json.dumps(finite_or_none(result), indent=2))
        table = markdown(result)
        (out / "gpu_check.md").write_text(table)
        print(table)
        if temp:
            shutil.rmtree(args.work, ignore_errors=True)
    return 1 if any(r["status"] == "failed" for r in result["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
