"""Training on a busy CPU: steps reached in a fixed time by `train.threads=auto` and by fixed thread counts, with
0 and 1 other busy processes on the machine, side by side in one run.

    python benchmarks/contention.py                        # the demo preset, 60 s per run, busy 0 and 1
    python benchmarks/contention.py --seconds 3            # smoke run
    python benchmarks/contention.py --busy 0,1,2 --fixed 1,2,4 --repeats 2 --json contention.json

Every training runs in a fresh process (as `ddpm train` does), with OMP_NUM_THREADS and MKL_NUM_THREADS removed
from its environment so that `auto` sees all the threads torch would use. A busy process is a pure-Python loop
spinning on one core, started before the trainings of its condition and killed after them. The training budget
(`train.max_minutes`) counts from the start of `fit()`: loading data and building the model are not in it.
Periodic checkpoints and sample grids are off; validation stays as the preset has it.
Target (DESIGN.md): `auto` reaches ≥ 0.9× the steps of the best fixed count in each condition.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TARGET = 0.9
BUSY_LOOP = "while True:\n    pass\n"


def _child(args: argparse.Namespace) -> None:
    """One training run: print {"steps": …, "choices": […]} as the last line."""
    from ddpm.config import apply_overrides, get_preset
    from ddpm.train import Trainer

    cfg = apply_overrides(
        get_preset(args.preset),
        [
            f"train.max_minutes={args.seconds / 60}",
            "train.max_steps=none",
            "train.checkpoint_every=none",
            "train.sample_every=none",
            f"train.threads={args.child}",
            *args.set,
        ],
    )
    run = Path(args.out)
    summary = Trainer(cfg, run, progress=False, log=lambda s: None).fit()
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    choices = [
        {k: r[k] for k in ("step", "threads", "threads_reason", "step_s")} for r in records if "threads" in r
    ]
    print(json.dumps({"steps": summary["step"], "choices": choices}), flush=True)


def _train(args: argparse.Namespace, threads: str, workdir: Path, tag: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", threads, "--out", str(workdir / tag)]
    cmd += ["--preset", args.preset, "--seconds", str(args.seconds)]
    cmd += [a for s in args.set for a in ("--set", s)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"training with threads={threads} failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _busy(k: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(k)]
    time.sleep(0.5 if k else 0.0)  # let them start spinning
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="training time per run")
    ap.add_argument("--busy", default="0,1", help="numbers of busy background processes, comma-separated")
    ap.add_argument("--fixed", default="1,2", help="fixed thread counts to compare with auto")
    ap.add_argument("--repeats", type=int, default=1, help="runs per cell (the median is reported)")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one training run
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        _child(args)
        return

    import torch

    modes = ["auto", *map(str, _ints(args.fixed))]
    print(
        f"# contention: preset {args.preset}, {args.seconds:g} s of training per run, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {args.repeats} run(s) per cell",
        flush=True,
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="ddpm-contention-") as tmp:
        for k in _ints(args.busy):
            procs = _busy(k)
            try:
                runs: dict[str, list[dict]] = {m: [] for m in modes}
                for r in range(args.repeats):
                    order = modes if r % 2 == 0 else modes[::-1]  # alternate the order against drift
                    for m in order:
                        out = _train(args, m, Path(tmp), f"busy{k}-{m}-{r}")
                        runs[m].append(out)
                        print(f"busy {k}, threads {m}: {out['steps']} steps", flush=True)
            finally:
                _stop(procs)
            steps = {m: statistics.median(o["steps"] for o in runs[m]) for m in modes}
            best = max(modes[1:], key=lambda m: steps[m]) if len(modes) > 1 else "auto"
            chose = [c["threads"] for o in runs["auto"] for c in o["choices"]]
            results.append(
                {
                    "busy": k,
                    "steps": steps,
                    "best_fixed": best,
                    "ratio": steps["auto"] / max(steps[best], 1),
                    "auto_choices": [o["choices"] for o in runs["auto"]],
                    "auto_chose": chose,
                }
            )

    head = ["busy processes", "auto", *(f"{m} thread{'s' if m != '1' else ''}" for m in modes[1:])]
    print()
    print("| " + " | ".join([*head, "auto / best fixed", "auto chose"]) + " |")
    print("|" + "---|" * (len(head) + 2))
    for res in results:
        cells = [str(res["busy"]), *(f"{res['steps'][m]:g}" for m in modes)]
        chose = " → ".join(map(str, res["auto_chose"])) or "-"
        print("| " + " | ".join([*cells, f"{res['ratio']:.2f}", chose]) + " |")
    met = all(res["ratio"] >= TARGET for res in results)
    print(f"\ntarget auto ≥ {TARGET}× the best fixed count in every condition: {'met' if met else 'MISSED'}")
    if args.seconds < 10:
        print("(a run this short is a smoke test: tuning takes several steps of it)")
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": args.seconds, "results": results}, indent=2))


if __name__ == "__main__":
    main()
