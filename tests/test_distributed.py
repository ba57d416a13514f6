"""Data-parallel training on the CPU (gloo on 127.0.0.1): 2 processes = 1 process with the same global batch.

The ranks are started with ``torch.multiprocessing.spawn`` (env:// rendezvous, as torchrun sets it up), plus one
end-to-end run of ``torchrun --nproc_per_node 2 -m ddpm train``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ddpm import distributed as dist_lib
from ddpm.checkpoint import load_checkpoint
from ddpm.config import apply_overrides, config_from_dict, config_to_dict, get_preset
from ddpm.train import Trainer

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def _config(*overrides: str):
    return apply_overrides(
        get_preset("tiny"),
        [
            "data.limit=400",
            "data.flip=true",  # flips are drawn per data position: they must shard like the examples
            "train.batch_size=8",
            "train.log_every=1",
            "train.val_every=2",
            "train.checkpoint_every=none",
            "train.device=cpu",
            *overrides,
        ],
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, cfg: dict, run_dir: str, resume: bool, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    try:
        tr = Trainer(config_from_dict(cfg), run_dir, resume=resume, progress=False)
        assert tr.dist.world_size == world and tr.micro_batch * world * tr.config.train.grad_accum == 8
        summary = tr.fit()
        torch.save(
            {"model": tr.model.state_dict(), "ema": tr.ema.state_dict(), "step": summary["step"]},
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist_lib.destroy()


def _spawn(world: int, cfg, run_dir: Path, out: Path, resume: bool = False) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    args = (world, _free_port(), config_to_dict(cfg), str(run_dir), resume, str(out))
    mp.spawn(_worker, args=args, nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


def _single(cfg, run_dir: Path, resume: bool = False) -> Trainer:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tr = Trainer(cfg, run_dir, resume=resume, progress=False)
        tr.fit()
    finally:
        torch.set_num_threads(threads)
    return tr


def _losses(run: Path) -> dict[int, float]:
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


def _assert_close(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-6, msg=lambda m, k=k: f"{what} {k}: {m}")


def test_two_ranks_equal_one_process_and_resume_on_one(tmp_path):
    """2 gloo ranks (each 2 accumulation micro-batches of 2) = 1 process (one batch of 8) after 4 steps, with
    identical replicas and EMA; a 2-rank checkpoint at step 2 resumed by 1 process reaches the same step 4."""
    cfg = _config("train.max_steps=4", "train.grad_accum=1")
    ref = _single(cfg, tmp_path / "single")
    ref_model, ref_ema = ref.model.state_dict(), ref.ema.state_dict()

    ranks = _spawn(2, apply_overrides(cfg, ["train.grad_accum=2"]), tmp_path / "ddp", tmp_path / "out")
    assert ranks[0]["step"] == ranks[1]["step"] == 4
    for key in ranks[0]["model"]:  # replicas are bitwise identical, and so is the EMA
        assert torch.equal(ranks[0]["model"][key], ranks[1]["model"][key]), key
        assert torch.equal(ranks[0]["ema"][key], ranks[1]["ema"][key]), key
    _assert_close(ranks[0]["model"], ref_model, "parameter")
    _assert_close(ranks[0]["ema"], ref_ema, "EMA")
    single, ddp = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert sorted(ddp) == [1, 2, 3, 4]  # rank 0 alone wrote the metrics
    for step, loss in single.items():
        assert ddp[step] == pytest.approx(loss, rel=1e-5), step
    ck = load_checkpoint(tmp_path / "ddp")
    assert ck.step == 4 and ck.state["world_size"] == 2 and len(ck.state["rng_ranks"]) == 2
    assert ck.state["batches"]["examples"] == 2 * ck.state["batches"]["position"]

    # A 2-rank run stopped at step 2 and continued by one process ends where the single process did.
    _spawn(2, apply_overrides(cfg, ["train.max_steps=2"]), tmp_path / "cut", tmp_path / "out2")
    assert load_checkpoint(tmp_path / "cut").state["batches"]["examples"] == 16
    resumed = _single(cfg, tmp_path / "cut", resume=True)
    assert resumed.step == 4
    _assert_close(resumed.model.state_dict(), ref_model, "parameter after resume")
    _assert_close(resumed.ema.state_dict(), ref_ema, "EMA after resume")


def test_rank_helpers_single_process():
    assert not dist_lib.is_distributed() and dist_lib.is_main() and dist_lib.world_size() == 1
    assert dist_lib.init_from_env("cpu") == dist_lib.DistInfo()  # no WORLD_SIZE: nothing is initialised
    assert dist_lib.any_flag(True) and not dist_lib.any_flag(False)
    assert dist_lib.broadcast_float(None) is None and dist_lib.broadcast_float(2.5) == 2.5
    assert dist_lib.rank_slice(8, 1, 2) == slice(1, 8, 2)
    with pytest.raises(ValueError, match="does not split"):
        dist_lib.rank_slice(6, 0, 4)
    dist_lib.check_replicas([torch.ones(3)])  # trivially fine in one process


def test_global_batch_must_split_over_ranks(tmp_path, monkeypatch):
    from ddpm.config import ConfigError

    monkeypatch.setattr(
        dist_lib, "init_from_env", lambda device_type="cpu": dist_lib.DistInfo(0, 3, 0, "gloo")
    )
    with pytest.raises(ConfigError, match="not divisible by train.grad_accum=1 × 3 ranks"):
        Trainer(_config(), tmp_path / "run", progress=False)


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")  # fmt: skip
def test_torchrun_cli_end_to_end(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    cmd = [
        torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "ddpm", "train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--max-steps", "3",
        "--no-progress", "--set", "data.limit=200", "--set", "train.batch_size=8", "--set", "train.threads=1",
        "--set", "train.device=cpu", "--set", "train.log_every=1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    ck = load_checkpoint(tmp_path / "run")
    assert ck.step == 3 and ck.state["world_size"] == 2
    assert sorted(_losses(tmp_path / "run")) == [1, 2, 3]
