"""CIFAR-10 on a CPU budget: train for a fixed wall-clock time, draw samples (timed), score FID and KID against the
10,000 test images with the standard network; peers under the same budget, data and FID, side by side.

    python benchmarks/cifar_budget.py                                # ours (cifar10-cpu), 30 min, 5,000 samples
    python benchmarks/cifar_budget.py --peers ours,seed-lesson,diffusers
    python benchmarks/cifar_budget.py --minutes 1 --n 200 --peers ours --ref-n 500   # a smoke run
    python benchmarks/cifar_budget.py --peers ours --skip-train     # re-score the runs already trained

Peers:
- ``ours``: the ``cifar10-cpu`` preset (``--preset`` another), sampled with its own sampler.
- ``seed-lesson``: the seed lesson's CIFAR-10 recipe (preset ``seed-lesson-cifar10``), trained by our trainer.
- ``diffusers``: diffusers' own recipe, ``UNet2DModel`` + ``DDPMScheduler`` as the defaults of
  ``examples/unconditional_image_generation/train_unconditional.py`` configure them at resolution 32
  (``benchmarks/peers/diffusers_unconditional.py``), sampled with diffusers' DDIM at 50 steps.

Data: the 50,000 training JPEGs of ``../shared/data/cifar10/cifar10-jpeg.zip``; every peer trains on them for the
same minutes (counted from the first step), with threads chosen by ``ddpm.threads`` for all. Samples are scored
against the 10,000 test images (statistics cached) with bf16 Inception features (``--fp32-inception`` for fp32).
The floor is ``--n`` real training images scored the same way. Like against like: when a peer's ``--n`` samples
would take longer than its training budget (estimated from one timed batch), it is scored on 1,000 samples, and
ours on 1,000 as well; a sampler too slow even for that (the lesson's 1,000-step ancestral chain) is replaced by
DDIM at 50 steps, and the table says so. The machine's speed (bf16 matmul TFLOP/s) is printed with the figures:
absolute figures from a slower machine are not comparable. Grids of 64 samples go to ``docs/``.
Targets (DESIGN.md): ours FID ≤ 50 with 5,000 samples, 5,000 samples in ≤ 5 minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ddpm.config import apply_overrides  # noqa: E402
from ddpm.data import load  # noqa: E402
from ddpm.metrics import fid as fid_lib  # noqa: E402
from ddpm.pipeline import generate, load_model  # noqa: E402
from ddpm.recipes import get_recipe  # noqa: E402
from ddpm.train import Trainer  # noqa: E402
from ddpm.viz import save_grid  # noqa: E402

PEER_PRESETS = {"ours": "cifar10-cpu", "seed-lesson": "seed-lesson-cifar10"}
SMALL_N = 1000  # what a peer too slow to sample --n images is scored on (and ours beside it)
FALLBACK = ("ddim", 50)  # the sampler for a peer whose own cannot draw SMALL_N images within its budget


def machine_speed() -> float:
    """bf16 matmul TFLOP/s on this process's threads (2048², best of 5)."""
    a, b = torch.randn(2048, 2048, dtype=torch.bfloat16), torch.randn(2048, 2048, dtype=torch.bfloat16)
    a @ b
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best / 1e12


class Sampler:
    """How a peer draws images: ``draw(n, seed, steps)`` → uint8 [n, 3, 32, 32] at ``nfe`` network evaluations
    per image (``steps=None``), or at ``steps`` of them (the timing probe)."""

    def __init__(self, name: str, draw: Callable[..., torch.Tensor], nfe: int) -> None:
        self.name, self.draw, self.nfe = name, draw, nfe

    def estimate_s(self, n: int, probe: int = 16) -> float:
        """Seconds for n images: ``probe`` images drawn at 1 evaluation each, timed, scaled by n and nfe."""
        t0 = time.perf_counter()
        self.draw(probe, seed=123, steps=1)
        return (time.perf_counter() - t0) / probe * n * self.nfe


def ours_sampler(run: Path, method: str | None = None, steps: int | None = None) -> Sampler:
    lm = load_model(run)
    method = method or lm.config.sample.method
    steps = steps if steps is not None else lm.config.sample.steps
    nfe = steps or lm.diffusion.num_timesteps

    def draw(n: int, seed: int = 0, steps: int | None = steps) -> torch.Tensor:
        return generate(lm, n, method=method, steps=steps, seed=seed)

    return Sampler(f"{method}, {nfe} steps", draw, nfe)


def train_peer(peer: str, args: argparse.Namespace, run: Path, train_images: torch.Tensor) -> dict[str, Any]:
    t0 = time.monotonic()
    if peer == "diffusers":
        from peers import diffusers_unconditional as du

        out = du.train(train_images, minutes=args.minutes, out_dir=run)
        return {**out, "wall_s": round(time.monotonic() - t0, 1)}
    preset = args.preset if peer == "ours" else PEER_PRESETS[peer]
    overrides = [
        f"data.root={args.data_root}",
        f"train.max_minutes={args.minutes}",
        "train.sample_every=none",
    ]
    cfg = apply_overrides(get_recipe(preset), [*overrides, *(args.set if peer == "ours" else [])])
    summary = Trainer(cfg, run, progress=True).fit()
    return {
        "preset": preset,
        "steps": summary["step"],
        "images_seen": summary["step"] * cfg.train.batch_size,
        "final_loss": summary["train_loss"].get("final"),
        "wall_s": round(time.monotonic() - t0, 1),
    }


def peer_sampler(peer: str, run: Path) -> Sampler:
    if peer == "diffusers":
        from peers import diffusers_unconditional as du

        def draw(n: int, seed: int = 0, steps: int | None = None) -> torch.Tensor:
            return du.sample(run, n, seed=seed, steps=steps or 50)

        return Sampler("diffusers DDIM, 50 steps", draw, 50)
    return ours_sampler(run)


def score(images: torch.Tensor, ref: fid_lib.FeatureStats, extractor: Any) -> dict[str, Any]:
    st = fid_lib.compute_stats(images, extractor, keep_features=True)
    kid_mean, kid_std = fid_lib.kid(st.features, ref.features)
    return {
        "fid": round(fid_lib.fid_from_stats(st, ref, warn=False), 2),
        "kid": round(kid_mean, 5),
        "kid_std": round(kid_std, 5),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="training budget per peer")
    ap.add_argument("--n", type=int, default=5000, help="samples scored per peer")
    ap.add_argument("--peers", default="ours", help="comma-separated: ours, seed-lesson, diffusers")
    ap.add_argument("--preset", default="cifar10-cpu", help="our preset")
    ap.add_argument(
        "--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help="for ours only"
    )
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    ap.add_argument("--runs", default="runs/cifar-budget", help="one run directory per peer under this")
    ap.add_argument("--ref-n", type=int, default=None, help="test images in the reference (default: all 10k)")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--fp32-inception", action="store_true")
    ap.add_argument("--docs", default=str(ROOT / "docs"), help="where the 64-sample grids go")
    args = ap.parse_args()
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = sorted(set(peers) - {"ours", "seed-lesson", "diffusers"})
    if unknown:
        raise SystemExit(f"unknown peer(s): {', '.join(unknown)}")

    speed = machine_speed()
    print(
        f"# cifar budget: {args.minutes:g} min per peer, {args.n} samples, bf16 matmul {speed:.2f} TFLOP/s "
        f"({torch.get_num_threads()} threads), torch {torch.__version__}",
        flush=True,
    )
    report: dict[str, Any] = {
        "minutes": args.minutes,
        "n": args.n,
        "bf16_tflops": round(speed, 3),
        "peers": {},
    }
    t0 = time.monotonic()
    train = load("cifar10", root=args.data_root, split="train")
    print(f"loaded {len(train)} training images in {time.monotonic() - t0:.0f} s", flush=True)

    runs = {p: Path(args.runs) / p for p in peers}
    for peer in peers:
        if not args.skip_train:
            print(f"## training {peer} for {args.minutes:g} min", flush=True)
            report["peers"][peer] = {"train": train_peer(peer, args, runs[peer], train.images)}
        else:
            report["peers"][peer] = {}

    extractor = fid_lib.InceptionFeatures(bf16=not args.fp32_inception)
    t0 = time.monotonic()
    ref = fid_lib.reference_stats(
        "cifar10", root=args.data_root, split="test", n=args.ref_n, extractor=extractor, keep_features=True
    )
    print(
        f"reference: {ref.n} test images ({time.monotonic() - t0:.0f} s, cached after the first run)",
        flush=True,
    )

    # Sample counts: --n, unless some peer cannot draw --n within its training budget (then SMALL_N for all).
    samplers = {p: peer_sampler(p, runs[p]) for p in peers}
    budget_s = 60 * args.minutes
    n = args.n
    for peer, s in samplers.items():
        est = s.estimate_s(args.n)
        report["peers"][peer]["sample_estimate_s"] = round(est, 1)
        if est > budget_s and n > SMALL_N:
            print(
                f"{peer}: {args.n} samples would take ~{est:.0f} s > the {budget_s:.0f} s budget: "
                f"every peer is scored on {SMALL_N}",
                flush=True,
            )
            n = min(n, SMALL_N)
    for peer, s in samplers.items():
        if peer != "diffusers" and s.estimate_s(n) > budget_s:  # its own sampler is unaffordable even then
            samplers[peer] = ours_sampler(runs[peer], *FALLBACK)
            report["peers"][peer]["sampler_note"] = (
                f"its own sampler ({s.name}) would take ~{s.estimate_s(n):.0f} s for {n}: "
                f"{FALLBACK[0]} at {FALLBACK[1]} steps instead"
            )
    report["n_scored"] = n
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    for peer, s in samplers.items():
        t0 = time.monotonic()
        images = s.draw(n, seed=0)
        dt = time.monotonic() - t0
        r = report["peers"][peer]
        r.update(sampler=s.name, sample_seconds=round(dt, 1), **score(images, ref, extractor))
        grid = save_grid(images[:64], docs / f"cifar_budget_{peer}.png", nrow=8)
        r["grid"] = str(grid)
        print(f"{peer}: {n} samples ({s.name}) in {dt:.0f} s, FID {r['fid']}, KID {r['kid']:.4f}", flush=True)

    g = torch.Generator().manual_seed(0)
    real = train.images[torch.randperm(len(train), generator=g)[:n]]
    report["floor"] = {"n": n, **score(real, ref, extractor)}

    out = Path(args.runs) / "budget_report.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\n| peer | training | samples | sampling | FID ({n} vs {ref.n} test) | KID |")
    print("|---|---|---|---|---|---|")
    for peer in peers:
        r = report["peers"][peer]
        t = r.get("train", {})
        trained = (
            f"{t.get('steps', '?')} steps, {t.get('images_seen', '?')} images" if t else "(not retrained)"
        )
        note = f" ({r['sampler_note']})" if "sampler_note" in r else ""
        print(
            f"| {peer} | {trained} | {n}, {r['sampler']}{note} | {r['sample_seconds']} s | {r['fid']} | "
            f"{r['kid']:.4f} ± {r['kid_std']:.4f} |"
        )
    f = report["floor"]
    print(
        f"| real training images (floor) | - | {n} | - | {f['fid']} | {f['kid']:.4f} ± {f['kid_std']:.4f} |"
    )
    print(
        f"\n(bf16 matmul {speed:.2f} TFLOP/s; targets: ours FID ≤ 50 at 5,000 samples, 5,000 samples ≤ 300 s)"
    )


if __name__ == "__main__":
    main()
