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
from typing import Any

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
from .log import append_record
from .progress import TrainProgress, load_best_weights, prune_best_weights, save_best_weights


class Checkpointing:
    """Start, resume and save a :class:`~ddpm.train.trainer.Trainer`'s run (it provides the attributes used)."""

    def _start_fresh(self) -> None:
        if latest_checkpoint(self.ckpt_dir) is not None:
            raise ConfigError(
                f"{self.run_dir} already holds checkpoints: pass --resume to continue it, or use a new --out"
            )
        if not self.dist.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(config_to_dict(self.config), indent=2))
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():
            metrics.unlink()

    def _resume(self) -> None:
        for line in recover_checkpoints(self.ckpt_dir):  # leftovers of a killed writer
            self.log(f"checkpoints: {line}")
        path = latest_checkpoint(self.ckpt_dir)
        if path is None:
            raise ConfigError(f"nothing to resume: no checkpoint in {self.ckpt_dir}")
        ck = load_checkpoint(path)
        load_weights_into(self.model, ck.model, f"checkpoint {path.name}")
        if ck.ema is not None:
            load_weights_into(self.ema.model, ck.ema, f"checkpoint {path.name} (EMA)")
        st = ck.state or {}
        if "optimizer" in st:
            self.optimizer.load_state_dict(st["optimizer"])
        if "scheduler" in st:
            self.scheduler.load_state_dict(st["scheduler"])
        if "scaler" in st and st["scaler"]:
            self.scaler.load_state_dict(st["scaler"])
        if "generator" in st:
            self.gen.set_state(st["generator"])
        self._restore_rng(st)
        if "batches" in st:
            self.batches.load_state_dict(self._rank_data_position(st))
        if "timestep_sampler" in st:
            self.timestep_sampler.load_state_dict(st["timestep_sampler"])
        self.run_progress = TrainProgress.from_state(st, step=ck.step)
        self.ema.num_updates = self.run_progress.ema_updates
        self._resume_best_weights()
        # Metrics logged after the checkpoint belong to the abandoned continuation: drop them.
        metrics = self.run_dir / "metrics.jsonl"
        if self.dist.is_main and metrics.exists():
            kept = [
                ln for ln in metrics.read_text().splitlines() if ln.strip() and _record_step(ln) <= self.step
            ]
            tmp = metrics.with_name(metrics.name + ".tmp")  # atomic: a kill here must not lose the history
            tmp.write_text("".join(ln + "\n" for ln in kept))
            os.replace(tmp, metrics)
        self.log(f"resumed {self.run_dir} at step {self.step} from {path.name}")

    def _resume_best_weights(self) -> None:
        """The best weights early stopping goes back to, from ``checkpoints/best-NNNNNNN`` (the resumed step's own
        weights when it is the best step; checkpoints written before best weights were saved have none)."""
        best = self.best_step
        if self.config.train.early_stopping_patience is None or best < 0:
            return
        weights = load_best_weights(self.ckpt_dir, best)
        if weights is None and best == self.step:
            weights = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.ema.state_dict()))
        if weights is None:
            self.log(
                f"warning: the best weights (step {best}) were not saved with this checkpoint: early stopping "
                "starts over and can only go back to a validation from now on"
            )
            self.best_val, self.bad_validations = math.inf, 0
            return
        self._best_weights, self._best_on_disk = weights, best

    def _restore_rng(self, st: dict[str, Any]) -> None:
        """The global RNG (dropout): one process restores the saved state; several ranks restore each their own
        when their number is unchanged, else they re-seed distinct streams from (seed, rank, step)."""
        if not self.dist.enabled:
            if "torch_rng" in st:
                torch.set_rng_state(st["torch_rng"])
            if "cuda_rng" in st and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(st["cuda_rng"])
            return
        ranks = st.get("rng_ranks")
        if isinstance(ranks, list) and len(ranks) == self.dist.world_size:
            mine = ranks[self.dist.rank]
            torch.set_rng_state(mine["torch"])
            if "cuda" in mine and self.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"], self.device)
        else:
            torch.manual_seed(_rank_seed(self.config.train.seed, self.dist.rank, int(st.get("step", 0))))

    def _batches_state(self) -> dict[str, int]:
        """``Batches.state_dict()`` plus ``examples``: examples into the epoch over all ranks."""
        return {**self.batches.state_dict(), "examples": self.batches.position * self.dist.world_size}

    def _rank_data_position(self, st: dict[str, Any]) -> dict[str, int]:
        """This rank's ``Batches`` state. Checkpoints store the data position as examples into the epoch over all
        ranks (ranks advance in lockstep, rank r holding global positions r, r + W, …), so a run resumes on any
        number of ranks that divides the global batch; older checkpoints hold the one-process position."""
        b = st["batches"]
        examples = int(b.get("examples", int(b["position"]) * int(st.get("world_size", 1))))
        world = self.dist.world_size
        if examples % world:
            raise ConfigError(
                f"cannot resume on {world} ranks: the checkpoint is {examples} examples into epoch {b['epoch']}, "
                f"not a multiple of {world}"
            )
        return {"epoch": int(b["epoch"]), "position": examples // world}

    # ------------------------------------------------------------------ state
    def train_state(self) -> dict[str, Any]:
        """Everything but the weights that an exact resume needs (a collective under torch.distributed)."""
        self.run_progress.ema_updates = self.ema.num_updates
        self.run_progress.elapsed_s = self._elapsed()
        st: dict[str, Any] = {
            **self.run_progress.state_dict(),  # step, best_val, …: top-level keys, as older checkpoints have them
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "batches": self._batches_state(),
            "world_size": self.dist.world_size,
            "timestep_sampler": self.timestep_sampler.state_dict(),
        }
        if torch.cuda.is_available():
            st["cuda_rng"] = torch.cuda.get_rng_state_all()
        if self.dist.enabled:  # every rank's dropout stream: resuming on as many ranks continues each exactly
            mine = {"torch": torch.get_rng_state()}
            if self.device.type == "cuda":
                mine["cuda"] = torch.cuda.get_rng_state(self.device)
            st["rng_ranks"] = dist_lib.all_gather_objects(mine)
        return st

    def _periodic_save(self) -> bool:
        """A periodic checkpoint. Failing to write it (full disk, …) is reported and retried at the next interval
        rather than ending the run: stopping would lose the in-memory progress too. Only the final save must
        succeed (see ``_finish``)."""
        try:
            self.save()
        except CheckpointError as e:
            self.log(f"warning: {e}; training goes on and retries at the next checkpoint")
            append_record(self.run_dir / "metrics.jsonl", {"step": self.step, "checkpoint_error": str(e)})
            return False
        return True

    def save(self) -> Path:
        """Write a checkpoint of the current step (atomically) and prune old ones.

        Under torch.distributed every rank calls this: the ranks' EMA weights are checked to be identical, rank 0
        writes while the others wait, and a failed write raises on every rank (so all of them go on alike).
        """
        state = self.train_state()
        if not self.dist.enabled:
            return self._write_checkpoint(state)
        dist_lib.check_replicas(self.ema.model.parameters(), "EMA weights")
        path, error = self.ckpt_dir / f"step-{self.step:07d}", None
        if self.dist.is_main:
            try:
                path = self._write_checkpoint(state)
            except Exception as e:  # noqa: BLE001 - re-raised below once the other ranks know
                error = e
        if dist_lib.any_flag(error is not None, self.device):  # also the barrier the other ranks wait at
            if error is not None:
                raise error
            raise CheckpointError(f"rank 0 could not write checkpoint step-{self.step:07d}")
        return path

    def _write_checkpoint(self, state: dict[str, Any]) -> Path:
        """Rank 0's part of :meth:`save`: the best weights that ``state``'s ``best_step`` names (unless already on
        disk), then the step checkpoint, then the removal of best weights that no checkpoint needs any more."""
        keep_best = self.best_step if self._best_weights is not None else None
        if keep_best is not None and self._best_on_disk != keep_best:
            save_best_weights(self.ckpt_dir, keep_best, self.config, *self._best_weights)
            self._best_on_disk = keep_best
        path = save_checkpoint(
            self.ckpt_dir,
            self.step,
            self.config,
            self.model.state_dict(),
            self.ema.state_dict(),
            state,
            keep=self.config.train.keep_checkpoints,
        )
        prune_best_weights(self.ckpt_dir, keep_best)
        return path


def _rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """Seed of rank ``rank``'s global RNG (dropout) in a data-parallel run: distinct per rank and per resume step."""
    return (seed * 1_000_003 + step * 7_919 + rank + 1) % 2**63


def _record_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return sys.maxsize  # a line cut short by a crash: dropped on resume
