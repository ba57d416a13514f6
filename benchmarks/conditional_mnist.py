"""Class-conditional MNIST on a CPU budget: train `mnist-cond`, sample every digit with classifier-free guidance,
and report how often a classifier trained on real digits agrees with the requested label.

    python benchmarks/conditional_mnist.py                          # 10 minutes of training, w ∈ {0, 1, 3}
    python benchmarks/conditional_mnist.py --minutes 0.5 --per-class 10 --threads 1   # smoke run
    python benchmarks/conditional_mnist.py --run runs/conditional-mnist --skip-train --guidance 0,0.5,1,2,3,5

Data: the 10,000 real MNIST test digits in ../shared/data/mnist (the train split needs a download); the diffusion
model trains on all of them. The judge is ``ddpm.metrics.classifier`` (``load_classifier`` / ``agreement``),
by default the one cached in ``~/.cache/ddpm/classifiers/mnist/``. Where none is cached the script trains one
first (``python -m ddpm.metrics.classifier train --dataset mnist``, ``--classifier-minutes`` of CPU), or — with
``--classifier-minutes 0`` — reports the samples without an agreement rate.

Guidance follows Ho & Salimans 2022: ε̃ = (1 + w)·ε(x, y) − w·ε(x, ∅); w = 0 is plain conditional sampling.
Expected: agreement rises with w (sharper, more prototypical digits) while diversity falls.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddpm.config import apply_overrides  # noqa: E402
from ddpm.data import pad_images  # noqa: E402
from ddpm.pipeline import generate, load_model, save_images  # noqa: E402
from ddpm.recipes import get_recipe  # noqa: E402
from ddpm.train import Trainer  # noqa: E402
from ddpm.viz import class_grid  # noqa: E402


def _classifier(args: argparse.Namespace):  # -> (model | None, where or why not)
    try:
        from ddpm.metrics import classifier as clf
    except ImportError as e:  # the module is optional for this benchmark
        return None, f"ddpm.metrics.classifier is unavailable ({e})"
    where = Path(args.classifier) if args.classifier else clf.default_classifier_dir("mnist")
    if not (where / "classifier.json").is_file() and not args.classifier and args.classifier_minutes > 0:
        print(f"no MNIST classifier in {where}: training one ({args.classifier_minutes:g} min)", flush=True)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        cmd = [sys.executable, "-m", "ddpm.metrics.classifier", "train", "--dataset", "mnist"]
        cmd += ["--data-root", args.data_root, "--max-minutes", str(args.classifier_minutes)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        subprocess.run(cmd, check=True, env=env)
    try:
        return clf.load_classifier(where), str(where)
    except ValueError as e:  # ClassifierError: missing or corrupt files, one line
        return None, str(e)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget (wall clock)")
    ap.add_argument("--guidance", default="0,1,3", help="comma-separated guidance scales w")
    ap.add_argument("--per-class", type=int, default=100, help="samples per digit and guidance scale")
    ap.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9", help="which digits to request")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--run", default="runs/conditional-mnist")
    ap.add_argument("--preset", default="mnist-cond")
    ap.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    ap.add_argument("--skip-train", action="store_true", help="evaluate the newest checkpoint of --run")
    ap.add_argument("--method", default=None, help="sampler (default: the preset's)")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the preset's)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--classifier", default=None, help="classifier directory (default: the cache)")
    ap.add_argument(
        "--classifier-minutes", type=float, default=3.0, help="train one if none is cached (0: no)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    scales = [float(w) for w in args.guidance.split(",") if w.strip()]
    digits = [int(d) for d in args.digits.split(",") if d.strip()]

    run = Path(args.run)
    report: dict[str, object] = {"preset": args.preset, "minutes": args.minutes}
    if not args.skip_train:
        overrides = [f"data.root={args.data_root}", f"train.max_minutes={args.minutes}", *args.set]
        if args.threads:
            overrides.append(f"train.threads={args.threads}")
        cfg = apply_overrides(get_recipe(args.preset), overrides)
        if cfg.model.num_classes is None:
            raise SystemExit(f"preset {args.preset!r} is not class-conditional (model.num_classes is unset)")
        t0 = time.monotonic()
        summary = Trainer(cfg, run, progress=True).fit()
        report.update(
            train_steps=summary["step"],
            train_seconds=round(time.monotonic() - t0, 1),
            final_loss=summary["train_loss"].get("final"),
        )
        print(f"trained {summary['step']} steps in {report['train_seconds']} s", flush=True)

    lm = load_model(run)
    if lm.config.model.num_classes is None:
        raise SystemExit(f"{run} holds an unconditional model")
    judge, where = _classifier(args)
    report["classifier"] = where
    if judge is not None:
        from ddpm.metrics.classifier import agreement

        report["classifier_accuracy"] = getattr(judge, "info", {}).get("test_accuracy")
    else:
        print(f"note: no agreement rate: {where}", flush=True)

    labels = torch.tensor(digits).repeat_interleave(args.per_class)
    results = []
    for w in scales:
        t0 = time.monotonic()
        images = generate(
            lm,
            len(labels),
            method=args.method,
            steps=args.steps if args.steps is not None else -1,
            seed=0,
            labels=labels,
            guidance=w,
            precision=args.precision,
        )
        r: dict[str, object] = {
            "guidance": w,
            "n": len(labels),
            "sample_seconds": round(time.monotonic() - t0, 1),
        }
        # The judge is trained on 32×32 digits; 28×28 samples get their border.
        images = pad_images(images, 32)
        if judge is not None:
            r["agreement"] = round(agreement(judge, images, labels), 4)
            r["per_digit"] = {
                d: round(agreement(judge, images[labels == d], labels[labels == d]), 3) for d in digits
            }
        grid = class_grid(images[_first_k(labels, digits, 10)], len(digits), run / f"classes_w{w:g}.png")
        save_images(images, run / f"samples_w{w:g}.npz", labels)
        r["grid"] = str(grid)
        results.append(r)
        line = f"w={w:g}: {len(labels)} samples in {r['sample_seconds']} s"
        print(line + (f", classifier agreement {r['agreement']:.3f}" if "agreement" in r else ""), flush=True)
    report["results"] = results
    report["sampler"] = {
        "method": args.method or lm.config.sample.method,
        "steps": args.steps or lm.config.sample.steps,
    }
    (run / "conditional_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if judge is not None:
        rates = " | ".join(f"w={r['guidance']:g}: {r['agreement']:.3f}" for r in results)
        print(
            f"\nconditional MNIST: {report.get('train_steps', '?')} steps in {args.minutes:g} min | "
            f"classifier agreement with the requested digit: {rates}"
        )


def _first_k(labels: torch.Tensor, digits: list[int], k: int) -> torch.Tensor:
    """Indices of up to k samples per digit, digit by digit (rows of the class grid)."""
    per = min(k, int((labels == digits[0]).sum()))
    return torch.cat([torch.nonzero(labels == d).flatten()[:per] for d in digits])


if __name__ == "__main__":
    main()
