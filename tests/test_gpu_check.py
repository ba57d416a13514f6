"""benchmarks/gpu_check.py on the CPU: ``--smoke`` runs every part that needs no CUDA with a tiny network and
reports the others as skipped; the DDP part runs over gloo when asked (``--ddp-on-cpu``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpm.builders import build_model, resolve_config
from ddpm.config import apply_overrides
from ddpm.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
PARTS = ["train-bf16", "sample", "train-fp16", "peer-bf16", "peer-fp16", "ddp", "tests"]


def _run(tmp_path: Path, *flags: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "out"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "OUT": str(tmp_path / "ignored")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--smoke",
        "--out",
        str(out),
        "--work",
        str(tmp_path / "work"),
        *flags,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)

    def no_nan(name: str) -> float:
        raise ValueError(f"the JSON holds {name}")

    report = json.loads((out / "gpu_check.json").read_text(), parse_constant=no_nan)
    return res, report


def test_smoke_runs_the_cpu_parts_and_skips_the_cuda_ones(tmp_path):
    res, report = _run(tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    parts = report["parts"]
    assert list(parts) == PARTS and report["smoke"] and report["device"] == "cpu"
    for name in ("train-fp16", "peer-fp16", "ddp", "tests"):
        assert parts[name]["status"] == "skipped" and "needs CUDA" in parts[name]["reason"], name

    train = parts["train-bf16"]
    assert train["status"] == "ok" and train["precision"] == "bf16" and train["steps"] == 16
    assert train["checks"] == {"losses finite": True, "loss decreasing": True}
    assert train["loss_last_quarter"] < train["loss_first_quarter"] and train["img_per_s"] > 0
    assert train["peak_mb"] is None  # CUDA memory only
    cfg = resolve_config(apply_overrides(get_recipe("cifar10-ddpm"), train["overrides"]))
    assert train["params"] == sum(p.numel() for p in build_model(cfg).parameters())
    assert cfg.model.channel_mult == (1, 2) and cfg.train.batch_size == 8 and cfg.train.max_steps == 16

    sample = parts["sample"]
    assert sample["status"] == "ok" and sample["n"] == 64 and sample["step"] == 16
    from PIL import Image

    for key in ("ddim5_grid", "ddpm5_grid"):
        with Image.open(tmp_path / "out" / sample[key]) as im:
            assert im.size == (8 * 34 + 2, 8 * 34 + 2)  # 8 × 8 images of 32 px, 2 px apart

    peer = parts["peer-bf16"]
    try:
        import diffusers  # noqa: F401
    except ImportError:
        assert peer["status"] == "skipped" and "diffusers" in peer["reason"]
    else:
        assert peer["status"] == "ok" and peer["max_abs_diff_fp32"] < 1e-3
        for mode in ("train", "infer"):
            ratio = peer[f"{mode}_ours_img_per_s"] / peer[f"{mode}_diffusers_img_per_s"]
            assert peer[f"{mode}_ratio"] == pytest.approx(ratio)

    table = (tmp_path / "out" / "gpu_check.md").read_text()
    assert table in res.stdout
    rows = [ln.split("|")[1:3] for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert [(n.strip(), s.strip()) for n, s in rows] == [(n, parts[n]["status"]) for n in PARTS]
    assert not (tmp_path / "ignored").exists()  # --out wins over $OUT


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_part_over_gloo_with_two_ranks(tmp_path):
    """The torchrun launch, the Trainer's own DDP over 2 ranks, the all-reduce and the collective save."""
    res, report = _run(tmp_path, "--only", "ddp", "--ddp-on-cpu", "--ddp-world", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = report["parts"]["ddp"]
    assert ddp["status"] == "ok", ddp
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo" and ddp["ddp_wrapped_by"] == "trainer"
    assert ddp["global_batch"] == 16 and all(v is not None for v in ddp["losses"])
    assert Path(ddp["checkpoint"]).name == "step-0000002"
    assert all(report["parts"][n]["reason"] == "not in --only" for n in PARTS if n != "ddp")
