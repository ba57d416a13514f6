"""The trainer's run directory and checkpoints: a fresh start, an exact resume (weights, optimizer, scheduler,
scaler, RNGs, data position, progress counters, the best weights of early stopping), and atomic saves.

A mixin of :class:`~ddpm.train.trainer.Trainer`, kept apart so that the trainer reads as setup, step and loop.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import distributed as dist_lib
from ..checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_weights_into,
    recover_checkpoints,
    save_checkpoint,
)
from ..config import ConfigError, config_to_dict
from ..runlog import append as append_record
from .progress import TrainProgress, load_best_weights, prune_best_weights, save_best_weights

if TYPE_CHECKING:
    from .trainer import Trainer


def start_fresh(tr: Trainer) -> None:
    if latest_checkpoint(tr.ckpt_dir) is not None:
        raise ConfigError(
            f"{tr.run_dir} already holds checkpoints: pass --resume to continue it, or use a new --out"
        )
    if not tr.dist.is_main:
        return
    tr.run_dir.mkdir(parents=True, exist_ok=True)
    (tr.run_dir / "config.json").write_text(json.dumps(config_to_dict(tr.config), indent=2))
    metrics = tr.run_dir / "metrics.jsonl"
    if metrics.exists():
        metrics.unlink()


def resume(tr: Trainer) -> None:
    for line in recover_checkpoints(tr.ckpt_dir):  # leftovers of a killed writer
        tr.log(f"checkpoints: {line}")
    path = latest_checkpoint(tr.ckpt_dir)
    if path is None:
        raise ConfigError(f"nothing to resume: no checkpoint in {tr.ckpt_dir}")
    ck = load_checkpoint(path)
    load_weights_into(tr.model, ck.model, f"checkpoint {path.name}")
    if ck.ema is not None:
        load_weights_into(tr.ema.model, ck.ema, f"checkpoint {path.name} (EMA)")
    st = ck.state or {}
    if "optimizer" in st:
        tr.optimizer.load_state_dict(st["optimizer"])
    if "scheduler" in st:
        tr.scheduler.load_state_dict(st["scheduler"])
    if "scaler" in st and st["scaler"]:
        tr.scaler.load_state_dict(st["scaler"])
    if "generator" in st:
        tr.gen.set_state(st["generator"])
    restore_rng(tr, st)
    if "batches" in st:
        tr.batches.load_state_dict(rank_data_position(tr, st))
    if "timestep_sampler" in st:
        tr.timestep_sampler.load_state_dict(st["timestep_sampler"])
    tr.load_extra_state(st)
    tr.run_progress = TrainProgress.from_state(st, step=ck.step)
    tr.ema.num_updates = tr.run_progress.ema_updates
    resume_best_weights(tr)
    # Metrics logged after the checkpoint belong to the abandoned continuation: drop them.
    metrics = tr.run_dir / "metrics.jsonl"
    if tr.dist.is_main and metrics.exists():
        kept = [ln for ln in metrics.read_text().splitlines() if ln.strip() and _record_step(ln) <= tr.step]
        tmp = metrics.with_name(metrics.name + ".tmp")  # atomic: a kill here must not lose the history
        tmp.write_text("".join(ln + "\n" for ln in kept))
        os.replace(tmp, metrics)
    tr.log(f"resumed {tr.run_dir} at step {tr.step} from {path.name}")


def resume_best_weights(tr: Trainer) -> None:
    """The best weights early stopping goes back to, from ``checkpoints/best-NNNNNNN`` (the resumed step's own
    weights when it is the best step; checkpoints written before best weights were saved have none)."""
    best = tr.best_step
    if tr.config.train.early_stopping_patience is None or best < 0:
        return
    weights = load_best_weights(tr.ckpt_dir, best)
    if weights is None and best == tr.step:
        weights = (copy.deepcopy(tr.model.state_dict()), copy.deepcopy(tr.ema.state_dict()))
    if weights is None:
        tr.log(
            f"warning: the best weights (step {best}) were not saved with this checkpoint: early stopping "
            "starts over and can only go back to a validation from now on"
        )
        tr.best_val, tr.bad_validations = math.inf, 0
        return
    tr._best_weights, tr._best_on_disk = weights, best


def restore_rng(tr: Trainer, st: dict[str, Any]) -> None:
    """The global RNG (dropout): one process restores the saved state; several ranks restore each their own
    when their number is unchanged, else they re-seed distinct streams from (seed, rank, step)."""
    if not tr.dist.enabled:
        if "torch_rng" in st:
            torch.set_rng_state(st["torch_rng"])
        if "cuda_rng" in st and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["cuda_rng"])
        return
    ranks = st.get("rng_ranks")
    if isinstance(ranks, list) and len(ranks) == tr.dist.world_size:
        mine = ranks[tr.dist.rank]
        torch.set_rng_state(mine["torch"])
        if "cuda" in mine and tr.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], tr.device)
    else:
        torch.manual_seed(_rank_seed(tr.config.train.seed, tr.dist.rank, int(st.get("step", 0))))


def batches_state(tr: Trainer) -> dict[str, int]:
    """``Batches.state_dict()`` plus ``examples``: examples into the epoch over all ranks."""
    return {**tr.batches.state_dict(), "examples": tr.batches.position * tr.dist.world_size}


def rank_data_position(tr: Trainer, st: dict[str, Any]) -> dict[str, int]:
    """This rank's ``Batches`` state. Checkpoints store the data position as examples into the epoch over all
    ranks (ranks advance in lockstep, rank r holding global positions r, r + W, …), so a run resumes on any
    number of ranks that divides the global batch; older checkpoints hold the one-process position."""
    b = st["batches"]
    examples = int(b.get("examples", int(b["position"]) * int(st.get("world_size", 1))))
    world = tr.dist.world_size
    if examples % world:
        raise ConfigError(
            f"cannot resume on {world} ranks: the checkpoint is {examples} examples into epoch {b['epoch']}, "
            f"not a multiple of {world}"
        )
    return {"epoch": int(b["epoch"]), "position": examples // world}


def train_state(tr: Trainer) -> dict[str, Any]:
    """Everything but the weights that an exact resume needs (a collective under torch.distributed)."""
    tr.run_progress.ema_updates = tr.ema.num_updates
    tr.run_progress.elapsed_s = tr.elapsed()
    st: dict[str, Any] = {
        **tr.run_progress.state_dict(),  # step, best_val, …: top-level keys, as older checkpoints have them
        "optimizer": tr.optimizer.state_dict(),
        "scheduler": tr.scheduler.state_dict(),
        "scaler": tr.scaler.state_dict() if tr.scaler.is_enabled() else {},
        "generator": tr.gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "batches": batches_state(tr),
        "world_size": tr.dist.world_size,
        "timestep_sampler": tr.timestep_sampler.state_dict(),
    }
    if torch.cuda.is_available():
        st["cuda_rng"] = torch.cuda.get_rng_state_all()
    st.update(tr.extra_state())
    if tr.dist.enabled:  # every rank's dropout stream: resuming on as many ranks continues each exactly
        mine = {"torch": torch.get_rng_state()}
        if tr.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(tr.device)
        st["rng_ranks"] = dist_lib.all_gather_objects(mine)
    return st


def periodic_save(tr: Trainer) -> bool:
    """A periodic checkpoint. Failing to write it (full disk, …) is reported and retried at the next interval
    rather than ending the run: stopping would lose the in-memory progress too. Only the final save must
    succeed (see ``_finish``)."""
    try:
        save(tr)
    except CheckpointError as e:
        tr.log(f"warning: {e}; training goes on and retries at the next checkpoint")
        append_record(tr.run_dir / "metrics.jsonl", {"step": tr.step, "checkpoint_error": str(e)})
        return False
    return True


def save(tr: Trainer) -> Path:
    """Write a checkpoint of the current step (atomically) and prune old ones.

    Under torch.distributed every rank calls this: the ranks' EMA weights are checked to be identical, rank 0
    writes while the others wait, and a failed write raises on every rank (so all of them go on alike).
    """
    state = train_state(tr)
    if not tr.dist.enabled:
        return write_checkpoint(tr, state)
    dist_lib.check_replicas(tr.ema.model.parameters(), "EMA weights")
    path, error = tr.ckpt_dir / f"step-{tr.step:07d}", None
    if tr.dist.is_main:
        try:
            path = write_checkpoint(tr, state)
        except Exception as e:  # noqa: BLE001 - re-raised below once the other ranks know
            error = e
    if dist_lib.any_flag(error is not None, tr.device):  # also the barrier the other ranks wait at
        if error is not None:
            raise error
        raise CheckpointError(f"rank 0 could not write checkpoint step-{tr.step:07d}")
    return path


def write_checkpoint(tr: Trainer, state: dict[str, Any]) -> Path:
    """Rank 0's part of :meth:`save`: the best weights that ``state``'s ``best_step`` names (unless already on
    disk), then the step checkpoint, then the removal of best weights that no checkpoint needs any more."""
    best = tr._best_weights
    keep_best = tr.best_step if best is not None else None
    if best is not None and keep_best is not None and tr._best_on_disk != keep_best:
        save_best_weights(tr.ckpt_dir, keep_best, tr.config, *best)
        tr._best_on_disk = keep_best
    path = save_checkpoint(
        tr.ckpt_dir,
        tr.step,
        tr.config,
        tr.model.state_dict(),
        tr.ema.state_dict(),
        state,
        keep=tr.config.train.keep_checkpoints,
    )
    prune_best_weights(tr.ckpt_dir, keep_best)
    return path


def _rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """Seed of rank ``rank``'s global RNG (dropout) in a data-parallel run: distinct per rank and per resume step."""
    return (seed * 1_000_003 + step * 7_919 + rank + 1) % 2**63


def _record_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return sys.maxsize  # a line cut short by a crash: dropped on resume
