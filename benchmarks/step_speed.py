"""Training-step speed of the small CPU presets: where a step's time goes (torch.profiler) and what each speed
option buys, side by side in one run.

    python benchmarks/step_speed.py                              # mnist-cpu and cifar10-cpu, every variant
    python benchmarks/step_speed.py --presets cifar10-cpu --variants baseline,compile --steps 10
    python benchmarks/step_speed.py --profile                    # also the top operators of each baseline step

Each (preset, variant) trains on random uint8 images of the preset's shape (data loading is not what is measured:
the batches are drawn from memory as in a real run), with a fixed thread count (``--threads``, default 2) so that
variants compare like with like; ``--repeats`` rounds alternate the order of the variants, and the median step
time is reported. Variants are config overrides: ``baseline`` (the preset), ``channels_last``, ``compile``
(``torch.compile``, inductor's CPU backend; its compilation is excluded by the warm-up), ``fp32`` (no bf16
autocast), and ``compile+channels_last``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddpm.config import apply_overrides  # noqa: E402
from ddpm.data import ImageData  # noqa: E402
from ddpm.recipes import get_recipe  # noqa: E402
from ddpm.train import Trainer  # noqa: E402

VARIANTS = {
    "baseline": [],
    "channels_last": ["train.channels_last=true"],
    "compile": ["train.compile=true"],
    "compile+channels_last": ["train.compile=true", "train.channels_last=true"],
    "fp32": ["train.precision=fp32"],
}


def trainer(preset: str, variant: str, threads: int) -> Trainer:
    cfg = get_recipe(preset)
    size, ch = cfg.data.image_size or cfg.model.image_size, cfg.model.in_channels
    n = max(4 * cfg.train.batch_size, 512)
    images = torch.randint(
        0, 256, (n, ch, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    data = ImageData(images, torch.zeros(n, dtype=torch.long), ["x"], "random")
    overrides = [
        f"train.threads={threads}",
        "train.checkpoint_every=none",
        "train.sample_every=none",
        "data.val_fraction=0",
        *VARIANTS[variant],
    ]
    cfg = apply_overrides(cfg, overrides)
    return Trainer(
        cfg,
        Path(tempfile.mkdtemp(prefix="ddpm-speed-")),
        data=(data, None),
        progress=False,
        log=lambda s: None,
    )


def time_steps(tr: Trainer, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        tr.train_step()
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        tr.train_step()
        out.append(time.perf_counter() - t0)
    return out


def profile(tr: Trainer, steps: int = 5, top: int = 12) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            tr.train_step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="mnist-cpu,cifar10-cpu")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile: at least 3)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    presets = [p for p in args.presets.split(",") if p]
    variants = [v for v in args.variants.split(",") if v]
    bad = sorted(set(variants) - set(VARIANTS))
    if bad:
        raise SystemExit(f"unknown variant(s): {', '.join(bad)} (known: {', '.join(VARIANTS)})")
    torch.set_num_threads(args.threads)
    print(f"# step speed: {args.threads} threads, torch {torch.__version__}", flush=True)
    results: dict[str, dict[str, list[float]]] = {p: {v: [] for v in variants} for p in presets}
    for preset in presets:
        trainers = {v: trainer(preset, v, args.threads) for v in variants}
        if args.profile and "baseline" in trainers:
            time_steps(trainers["baseline"], args.warmup, 0)
            print(f"\n## {preset}, baseline: top operators by self CPU time over 5 steps\n")
            print(profile(trainers["baseline"]), flush=True)
        for r in range(args.repeats):
            order = variants if r % 2 == 0 else variants[::-1]
            for v in order:
                times = time_steps(trainers[v], args.warmup if r == 0 else 1, args.steps)
                results[preset][v].extend(times)
                print(f"{preset} {v}: {statistics.median(times) * 1000:.0f} ms/step", flush=True)
    print("\n| preset | variant | ms/step (median) | steps/s | × baseline |")
    print("|---|---|---|---|---|")
    for preset in presets:
        base = statistics.median(results[preset].get("baseline") or results[preset][variants[0]])
        for v in variants:
            m = statistics.median(results[preset][v])
            print(f"| {preset} | {v} | {m * 1000:.0f} | {1 / m:.2f} | {base / m:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
