"""Few-step MNIST on a CPU: distil a `mnist-cpu` teacher into 8-, 4-, 2- and 1-step students and score them.

    python benchmarks/distill_mnist.py                              # teacher 10 min, distillation 20 min
    python benchmarks/distill_mnist.py --teacher runs/mnist-budget  # reuse a trained teacher run
    python benchmarks/distill_mnist.py --teacher-minutes 1 --distill-minutes 1 --n 200 --students 4  # smoke

Protocol (the MNIST budget protocol of benchmarks/mnist_budget.py): the teacher is `mnist-cpu` trained
``--teacher-minutes`` wall-clock minutes on the 10,000 real MNIST test digits; FID of ``--n`` samples (1,000)
against those 10,000 digits at 32×32 (zero-padded), TF-Inception features. Progressive distillation runs once,
``--distill-minutes`` of CPU in all, from a ``--teacher-steps``-step DDIM teacher down to 1 step; the student is
kept at the end of every round (``STUDENT/rounds/N-steps``, a run of its own), so the 8-, 4-, 2- and 1-step students all come
from that one budget (``--method consistency`` distils a separate student per step count instead, each with an
equal share). Compared at the same number of network evaluations (NFE): the teacher with each of its samplers
(ancestral, DDIM, DPM-Solver++(2M), UniPC, SDE-DPM-Solver++(2M)), its best at that NFE, and the teacher's own
25-step ancestral sampler. Sampling time is wall-clock for the ``--n`` images. Grids of 64 samples go to
``--out``. Targets (DESIGN.md): the 4-step student within 1.5× the teacher's 25-step FID, and better than the
teacher's best sampler at 4 NFE. The figures belong in the README (run this on a quiet machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddpm.config import apply_overrides  # noqa: E402
from ddpm.data import load, pad_images  # noqa: E402
from ddpm.distill import distill  # noqa: E402
from ddpm.metrics import fid as fid_lib  # noqa: E402
from ddpm.pipeline import LoadedModel, generate, load_model, save_images  # noqa: E402
from ddpm.recipes import get_recipe  # noqa: E402
from ddpm.train import Trainer  # noqa: E402

TEACHER_SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "unipc", "dpmpp_2m_sde")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", help="an existing teacher run (skips training it)")
    ap.add_argument("--teacher-minutes", type=float, default=10.0)
    ap.add_argument("--distill-minutes", type=float, default=20.0, help="CPU budget for all distillation")
    ap.add_argument("--method", choices=["progressive", "consistency"], default="progressive")
    ap.add_argument(
        "--teacher-steps", type=int, default=64, help="progressive: the first round's teacher steps"
    )
    ap.add_argument("--students", default="8,4,2,1", help="student step counts to score")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument(
        "--ref-n", type=int, help="reference digits for FID (default all 10,000; fewer: smoke runs only)"
    )
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--out", default="runs/distill-mnist")
    ap.add_argument(
        "--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help="student config"
    )
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    students = sorted({int(s) for s in args.students.split(",") if s.strip()}, reverse=True)
    report: dict[str, object] = {"method": args.method, "distill_minutes": args.distill_minutes, "n": args.n}

    teacher = Path(args.teacher) if args.teacher else out / "teacher"
    if not args.teacher:
        cfg = apply_overrides(
            get_recipe("mnist-cpu"),
            [f"data.root={args.data_root}", f"train.max_minutes={args.teacher_minutes}"],
        )
        summary = Trainer(cfg, teacher, progress=True).fit()
        report["teacher_train_steps"] = summary["step"]
    report["teacher"] = str(teacher)

    t0 = time.monotonic()
    student_runs = distil_students(args, teacher, out, students)
    report["distill_seconds"] = round(time.monotonic() - t0, 1)

    extractor = fid_lib.InceptionFeatures(bf16=True)
    real = load("mnist", root=args.data_root, split="test")
    ref = fid_lib.reference_stats("mnist", "test", args.ref_n, root=args.data_root, extractor=extractor)

    def score(lm: LoadedModel, name: str, **kw: object) -> dict[str, object]:
        t = time.monotonic()
        images = generate(lm, args.n, seed=0, progress=False, **kw)  # type: ignore[arg-type]
        dt = time.monotonic() - t
        save_images(images[:64], out / f"grid-{name}.png")
        padded = pad_images(images, real.image_size)
        fid = fid_lib.fid_from_stats(fid_lib.compute_stats(padded, extractor), ref, warn=False)
        row = {"name": name, **kw, "sample_seconds": round(dt, 1), "fid": round(fid, 2)}
        print(json.dumps(row), flush=True)
        return row

    lm_teacher = load_model(teacher)
    rows = [score(lm_teacher, "teacher-ddpm-25", method="ddpm", steps=25)]
    for nfe in students:
        for method in TEACHER_SAMPLERS:
            rows.append(score(lm_teacher, f"teacher-{method}-{nfe}", method=method, steps=nfe))
    for nfe, run in student_runs.items():
        rows.append(score(load_model(run), f"student-{nfe}", steps=nfe))
    report["rows"] = rows

    ref25 = rows[0]["fid"]
    table = ["| NFE | student FID | teacher best (sampler) FID | teacher 25-step ancestral FID | student s |",
             "|---:|---:|---:|---:|---:|"]  # fmt: skip
    for nfe in students:
        st = next((r for r in rows if r["name"] == f"student-{nfe}"), None)
        best = min((r for r in rows if r["name"].startswith("teacher-") and r.get("steps") == nfe and
                    r["name"] != "teacher-ddpm-25"), key=lambda r: r["fid"])  # fmt: skip
        if st is not None:
            table.append(
                f"| {nfe} | {st['fid']} | {best['fid']} ({best['method']}) | {ref25} | {st['sample_seconds']} |"
            )
    report["table"] = table
    print("\n".join(table))
    (out / "distill_report.json").write_text(json.dumps(report, indent=2))


def distil_students(
    args: argparse.Namespace, teacher: Path, out: Path, students: list[int]
) -> dict[int, Path]:
    """Run the distillation(s); returns {steps: run directory of that student}."""
    if args.method == "consistency":
        share = args.distill_minutes / len(students)
        runs = {}
        for n in students:
            run = out / f"cd-{n}"
            distill(teacher, run, n, "consistency", max_minutes=share, overrides=args.set)
            runs[n] = run
        return runs
    # One progressive run down to the fewest steps: each finished round's student is kept in rounds/N-steps.
    fewest = min(students)
    run = out / f"pd-{fewest}"
    distill(
        teacher,
        run,
        fewest,
        "progressive",
        max_minutes=args.distill_minutes,
        teacher_steps=args.teacher_steps,
        overrides=args.set,
    )
    runs = {n: run / "rounds" / f"{n}-steps" for n in students if (run / "rounds" / f"{n}-steps").is_dir()}
    return {**runs, fewest: run}


if __name__ == "__main__":
    main()
