"""The command line's contract with a shell: one error prefix, quiet on a closed pipe, a demo that says when its
samples cannot be digits, and `ddpm sample` sampling in the run's own precision."""

import subprocess
import sys

import pytest
import torch

from ddpm import cli
from ddpm.cli import main


def test_unknown_command_has_one_prefix(capsys):
    assert main(["trian"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("ddpm: error: argument COMMAND: invalid choice: 'trian'") and err.count("ddpm:") == 1
    )
    assert len(err.splitlines()) == 1


def test_bad_subcommand_option_names_the_subcommand_once(capsys):
    assert main(["train", "--max-steps", "0"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("ddpm: error: train: argument --max-steps:") and err.count("ddpm:") == 1
    assert err.endswith("(see ddpm train --help)")


def test_a_closed_pipe_ends_quietly():
    """`ddpm train --preset tiny --dry-run | head` once ended with 'ddpm: error: [Errno 32] Broken pipe'."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddpm", "train", "--preset", "tiny", "--dry-run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before anything is written: every write gets EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == cli.EXIT_BROKEN_PIPE
    assert err == "", err


def test_demo_says_when_it_ran_too_few_steps(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path / "demo"), "--no-progress", "--set", "train.max_steps=4"])
    out = capsys.readouterr().out
    assert code == 0
    summary = next(line for line in out.splitlines() if line.startswith("demo finished"))
    assert "(4 steps, final loss " in summary and "nan" not in summary
    assert f"only 4 training steps ran (the demo needs about {cli.DEMO_MIN_STEPS}" in out
    assert "train.max_minutes=" in out


@pytest.mark.parametrize("run_precision", ["fp32", "bf16", "fp16"])
def test_sample_defaults_to_the_runs_precision(tmp_path, monkeypatch, run_precision):
    """What `ddpm sample --run RUN` does by default is what the budget benchmark measures: the run's precision
    (fp16, CUDA-only, falls back to auto on a CPU); --precision still overrides it."""
    from ddpm import pipeline
    from ddpm.train import resolve_precision

    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(run), "--max-steps", "2", "--no-progress"]) == 0
    for cfg in run.rglob("config.json"):  # the run's and its checkpoint's copy
        cfg.write_text(cfg.read_text().replace('"precision": "fp32"', f'"precision": "{run_precision}"'))
    expected = "auto" if run_precision == "fp16" else run_precision
    seen = []
    real = pipeline.autocast_context
    monkeypatch.setattr(pipeline, "autocast_context", lambda p, d: seen.append(p) or real(p, d))
    argv = ["sample", "--run", str(run), "--n", "2", "--steps", "2", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "s.npz")]) == 0
    assert seen and set(seen) == {resolve_precision(expected, torch.device("cpu"))}
    seen.clear()
    assert main([*argv, "--precision", "fp32", "--out", str(tmp_path / "t.npz")]) == 0
    assert set(seen) == {"fp32"}
