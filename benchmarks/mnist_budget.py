"""MNIST on a CPU budget: train the `mnist-cpu` preset for a fixed wall-clock time, sample, and score FID.

    python benchmarks/mnist_budget.py                     # 10 minutes of training, 1,000 samples
    python benchmarks/mnist_budget.py --minutes 2 --n 500 # a quicker look
    python benchmarks/mnist_budget.py --run runs/mnist-budget --skip-train --nfe 5,10,20,50

Data: the 10,000 real MNIST test digits in ../shared/data/mnist (the train split needs a download); the model
trains on them and FID/KID are measured against the same 10,000 digits at 32×32 (zero-padded), with the standard
TF-Inception features. `mnist-cpu` works at MNIST's native 28×28: its samples get the same 2 px of background
per side as the reference digits. As a yardstick the script also scores 1,000 real digits against the 10,000.
Targets (DESIGN.md): FID ≤ 25 after 10 minutes on 2 cores, 1,000 samples in ≤ 60 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddpm.config import apply_overrides  # noqa: E402
from ddpm.data import load, pad_images  # noqa: E402
from ddpm.metrics import fid as fid_lib  # noqa: E402
from ddpm.pipeline import generate, load_model, save_images  # noqa: E402
from ddpm.recipes import get_recipe  # noqa: E402
from ddpm.train import Trainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--run", default="runs/mnist-budget")
    ap.add_argument("--preset", default="mnist-cpu")
    ap.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--method", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--nfe", default="", help="also report FID at these step counts, e.g. 5,10,20,50")
    ap.add_argument("--precision", default="auto")
    ap.add_argument(
        "--fp32-inception",
        action="store_true",
        help="Inception features in fp32 (3x slower here; bf16 moves FID by ~0.1)",
    )
    args = ap.parse_args()

    run = Path(args.run)
    report: dict[str, object] = {"preset": args.preset, "minutes": args.minutes}
    if not args.skip_train:
        cfg = apply_overrides(
            get_recipe(args.preset),
            [f"data.root={args.data_root}", f"train.max_minutes={args.minutes}", *args.set],
        )
        t0 = time.monotonic()
        summary = Trainer(cfg, run, progress=True).fit()
        report.update(
            train_steps=summary["step"],
            train_seconds=round(time.monotonic() - t0, 1),
            final_loss=summary["train_loss"].get("final"),
        )
        print(f"trained {summary['step']} steps in {report['train_seconds']} s", flush=True)

    lm = load_model(run)
    extractor = fid_lib.InceptionFeatures(bf16=not args.fp32_inception)
    real = load("mnist", root=args.data_root, split="test")
    ref = fid_lib.reference_stats(
        "mnist", root=args.data_root, split="test", extractor=extractor, keep_features=True
    )
    yard = fid_lib.compute_stats(
        real.images[torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[: args.n]],
        extractor,
        keep_features=True,
    )
    report["fid_real_vs_real"] = round(fid_lib.fid_from_stats(yard, ref, warn=False), 2)

    def score(method: str | None, steps: int | None) -> dict[str, object]:
        t0 = time.monotonic()
        images = generate(
            lm,
            args.n,
            method=method,
            steps=steps if steps is not None else -1,
            seed=0,
            precision=args.precision,
        )
        dt = time.monotonic() - t0
        images = pad_images(images, real.image_size)  # 28×28 samples: the reference's 2 px of background
        st = fid_lib.compute_stats(images, extractor, keep_features=True)
        kid_mean, kid_std = fid_lib.kid(st.features, ref.features)
        return {
            "method": method or lm.config.sample.method,
            "steps": steps or lm.config.sample.steps,
            "sample_seconds": round(dt, 1),
            "fid": round(fid_lib.fid_from_stats(st, ref, warn=False), 2),
            "kid": round(kid_mean, 5),
            "kid_std": round(kid_std, 5),
            "images": images,
        }

    main_result = score(args.method, args.steps)
    save_images(main_result.pop("images"), run / "budget_samples.png")
    report["result"] = main_result
    sweep = []
    for nfe in [int(v) for v in args.nfe.split(",") if v.strip()]:
        r = score(args.method, nfe)
        r.pop("images")
        sweep.append(r)
    report["nfe_sweep"] = sweep

    print(json.dumps(report, indent=2))
    r = report["result"]
    print(
        f"\nMNIST budget: {report.get('train_steps', '?')} steps in {args.minutes:g} min | {args.n} samples "
        f"({r['method']}, {r['steps']} steps) in {r['sample_seconds']} s | FID {r['fid']} (target ≤ 25; "
        f"{args.n} real digits: {report['fid_real_vs_real']}) | KID {r['kid']:.4f} ± {r['kid_std']:.4f}"
    )
    for s in sweep:
        print(f"  NFE {s['steps']:>4}: FID {s['fid']:7.2f}  KID {s['kid']:.4f}  ({s['sample_seconds']} s)")
    (run / "budget_report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
