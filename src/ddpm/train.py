"""Training: AdamW, warm-up, gradient clipping, EMA, mixed precision, accumulation, validation, early stopping,
atomic checkpoints with exact resume, metrics and sample grids.

>>> cfg = ddpm.recipes.get_recipe("tiny")
>>> Trainer(cfg, "runs/tiny").fit()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import data as data_lib
from . import distributed as dist_lib
from .builders import build_diffusion, build_model, resolve_config
from .checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_weights_into,
    recover_checkpoints,
    save_checkpoint,
)
from .config import Config, ConfigError, config_to_dict
from .resample import create_timestep_sampler
from .runlock import RunLock
from .runtime import autocast_context, resolve_device, resolve_precision
from .threads import Choice, ThreadTuner, thread_scope, validate_threads
from .trainstate import TrainProgress, load_best_weights, prune_best_weights, save_best_weights

__all__ = [
    "EMA",
    "Trainer",
    "TrainingError",
    "build_diffusion",
    "build_model",
    "load_datasets",
    "resolve_config",
    "autocast_context",
    "resolve_device",
    "resolve_precision",
    "validate_config",
]


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. too many non-finite losses); the message is one line for the user."""


def validate_config(cfg: Config) -> None:
    """Refuse values a run cannot work with before anything is loaded or written (one ConfigError line each);
    what the config dataclasses and the optimizer already check is not repeated here."""
    tc, d = cfg.train, cfg.data
    at_least = {
        "train.batch_size": (tc.batch_size, 1),
        "train.grad_accum": (tc.grad_accum, 1),
        "train.log_every": (tc.log_every, 1),
        "train.sample_n": (tc.sample_n, 1),
        "train.val_batches": (tc.val_batches, 1),
        "train.max_nonfinite": (tc.max_nonfinite, 0),
        "data.limit": (d.limit if d.limit is not None else 1, 1),
        "data.image_size": (d.image_size if d.image_size is not None else 1, 1),
    }
    for key, (value, low) in at_least.items():
        if value < low:
            raise ConfigError(f"{key} must be at least {low}, got {value}")
    for key, value in (("train.ema_decay", tc.ema_decay), ("train.label_dropout", tc.label_dropout)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1], got {value}")
    if not 0.0 <= d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
    try:
        validate_threads(tc.threads, "train.threads")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not 0 <= tc.seed < 2**62:  # torch seeds are 64-bit; seed + k must fit
        raise ConfigError(f"train.seed must be in [0, 2**62), got {tc.seed}")
    dc = cfg.diffusion
    if dc.variance == "learned_range" and dc.loss == "mse":
        # L_simple does not depend on Σ: the variance channels would get no gradient and sampling would use an
        # untrained Σ. Improved DDPM (Nichol & Dhariwal 2021 §3.1) trains Σ with L_vlb (eq. 16: L_hybrid).
        raise ConfigError(
            "diffusion.variance=learned_range needs diffusion.loss=hybrid (or vlb): with loss=mse the variance "
            "is never trained"
        )


def load_datasets(cfg: Config) -> tuple[data_lib.ImageData, data_lib.ImageData | None]:
    """Load the configured dataset and split off the validation set (seeded by ``train.seed``)."""
    d = cfg.data
    data = data_lib.load(d.name, root=d.root, split=d.split, image_size=d.image_size, download=d.download)
    if d.limit is not None:
        data = data.subset(torch.arange(min(d.limit, len(data))))
    if d.val_fraction > 0:
        train, val = data_lib.train_val_split(data, d.val_fraction, cfg.train.seed)
        return train, val
    return data, None


# --------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of a model's parameters (buffers are copied).

    θ_ema ← d·θ_ema + (1 − d)·θ with d_k = min(decay, (1 + k)/(10 + k)) when ``warmup`` (k = updates so far), so a
    short run is not stuck at its initial weights; the shadow model is what sampling and evaluation use.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        self.decay, self.warmup = float(decay), warmup
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.num_updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        k = self.num_updates
        return min(self.decay, (1 + k) / (10 + k))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_p = [p for p in self.model.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        return self.model.state_dict()


# --------------------------------------------------------------------------- trainer
def _jsonl(path: Path, record: dict[str, Any]) -> None:
    if not dist_lib.is_main():  # under torch.distributed only rank 0 writes metrics
        return
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:  # a full disk must not end a run: metrics are best effort, checkpoints are not
        warnings.warn(f"could not append to {path}: {e.strerror or e}", stacklevel=2)
    tb = _tensorboard(path.parent)
    if tb is not None and isinstance(record.get("step"), int):
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                tb.add_scalar(key, value, record["step"])
        tb.flush()


_TENSORBOARD: dict[Path, Any] = {}


def _tensorboard(run_dir: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` for the run (``run_dir/tensorboard``) when tensorboard is installed."""
    if run_dir not in _TENSORBOARD:
        try:
            from torch.utils.tensorboard import SummaryWriter

            _TENSORBOARD[run_dir] = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            _TENSORBOARD[run_dir] = None
    return _TENSORBOARD[run_dir]


class _ProgressField:
    """A :class:`Trainer` attribute that lives in its :class:`TrainProgress` (``trainer.step`` is
    ``trainer.run_progress.step``)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        return self if obj is None else getattr(obj.run_progress, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj.run_progress, self.name, value)


class Trainer:
    """Train a DDPM as a config describes, in ``run_dir``.

    ``run_dir`` receives ``config.json``, ``metrics.jsonl``, ``checkpoints/step-NNNNNNN/``, ``samples/`` and, at
    the end, ``loss_curve.png`` and ``loss_stats.md``. With ``resume=True`` training continues from the newest
    complete checkpoint so that, on the CPU with a fixed seed, the loss trajectory equals an uninterrupted run's (with a fixed
    ``train.threads``: the thread count can change the order of float reductions).

    One trainer at a time per run directory: the trainer holds ``run_dir/.lock`` from construction until
    :meth:`fit` ends or :meth:`close` (or garbage collection, or ``with Trainer(...) as tr``) releases it; another
    one meanwhile raises :class:`~ddpm.runlock.RunLockedError` naming the holder. Under torch.distributed rank 0
    holds it for all ranks.
    """

    step = _ProgressField()
    best_val = _ProgressField()
    best_step = _ProgressField()
    bad_validations = _ProgressField()
    nonfinite_in_a_row = _ProgressField()
    nonfinite_total = _ProgressField()

    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        resume: bool = False,
        data: tuple[data_lib.ImageData, data_lib.ImageData | None] | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.log = log or (lambda s: print(s, file=sys.stderr))
        self.progress = progress
        tc = config.train
        validate_config(config)
        if isinstance(tc.threads, int):  # "auto" is measured by fit() (see _thread_tuning)
            torch.set_num_threads(tc.threads)
        self.device = resolve_device(tc.device)
        self.precision = resolve_precision(tc.precision, self.device)
        # Data-parallel training under torchrun: join the process group (a no-op in a single process). Only rank 0
        # logs, shows progress, samples and writes checkpoints (see ddpm.distributed).
        self.dist = dist_lib.init_from_env(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        if not self.dist.is_main:
            self.log, self.progress = (lambda s: None), False
        self.run_progress = TrainProgress()
        # Only rank 0 writes to the run directory; --resume of a directory that does not exist fails below.
        self._lock = RunLock(self.run_dir, self.log) if self.dist.is_main else None
        if self._lock is not None and (not resume or self.run_dir.is_dir()):
            self._lock.acquire()
        try:
            self._setup(config, resume, data)
        except BaseException:
            self.close()
            raise

    def _setup(
        self,
        config: Config,
        resume: bool,
        data: tuple[data_lib.ImageData, data_lib.ImageData | None] | None,
    ) -> None:
        """The rest of ``__init__``, under the run directory's lock."""
        train_data, val_data = data if data is not None else load_datasets(config)
        self.config = resolve_config(config, train_data)
        tc = self.config.train
        world = self.dist.world_size
        if tc.batch_size % (tc.grad_accum * world):
            ranks = f" × {world} ranks" if world > 1 else ""
            raise ConfigError(
                f"train.batch_size={tc.batch_size} is not divisible by train.grad_accum={tc.grad_accum}{ranks}"
            )
        # train.batch_size is the global batch: ranks × grad_accum × micro_batch images per optimizer step.
        self.micro_batch = tc.batch_size // (tc.grad_accum * world)
        self.train_data, self.val_data = train_data, val_data

        torch.manual_seed(tc.seed)
        self.diffusion = build_diffusion(self.config.diffusion)
        self.timestep_sampler = create_timestep_sampler(
            self.config.diffusion.timestep_sampler, self.diffusion
        )
        self.model = build_model(self.config).to(self.device)
        if tc.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, tc.ema_decay, tc.ema_warmup)
        self.ddp: nn.Module | None = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # DDP broadcasts rank 0's weights (identical anyway: same seed) and averages gradients over the ranks.
            self.ddp = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,  # the U-Net's only buffers are constant sinusoid frequencies
            )
            # Dropout draws from the global RNG: each rank gets its own stream (the weights are initialised by now).
            torch.manual_seed(_rank_seed(tc.seed, self.dist.rank))
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=tc.lr,
            betas=(tc.adam_beta1, tc.adam_beta2),
            eps=tc.adam_eps,
            **({"fused": True} if fused else {"foreach": True}),
        )
        self.batches = data_lib.Batches(
            self.train_data,
            self.micro_batch,
            seed=tc.seed,
            flip=bool(self.config.data.flip),
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self.total_steps = self._total_steps()
        self._time_progress = 0.0  # fraction of train.max_minutes used, over every fit() (lr schedule)
        self.clock: Callable[[], float] = time.monotonic  # the wall clock of train.max_minutes (tests set it)
        # (elapsed_s, clock()) when the running fit() began; None outside fit()
        self._fit_clock: tuple[float, float] | None = None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.gen = torch.Generator(self.device).manual_seed(tc.seed + 1)
        self._best_weights: tuple[dict[str, Tensor], dict[str, Tensor]] | None = None
        self._best_on_disk = -1  # the best_step whose weights checkpoints/best-NNNNNNN holds
        self._stop_reason: str | None = None
        self._compiled: Callable[..., Tensor] | None = None

        # Rank 0 goes first: it may clean up after a killed checkpoint writer and rewrites metrics.jsonl and
        # config.json; the other ranks then read the same (shared) run directory.
        if not self.dist.is_main:
            dist_lib.barrier()
        if resume:
            self._resume()
        else:
            self._start_fresh()
        if self.dist.is_main:
            dist_lib.barrier()

    # ------------------------------------------------------------------ setup
    def _total_steps(self) -> int:
        tc = self.config.train
        steps = []
        if tc.max_steps is not None:
            steps.append(tc.max_steps)
        if tc.epochs is not None:
            steps.append(math.ceil(tc.epochs * len(self.batches) / tc.grad_accum))
        if not steps:
            if tc.max_minutes is None:
                raise ConfigError("set train.max_steps, train.epochs or train.max_minutes")
            return 10**9
        return max(1, min(steps))

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up, then the ``lr_schedule`` decay to 0 over the budget: the larger of the fraction of
        steps done (after warm-up) and the fraction of ``max_minutes`` used (by every :meth:`fit` of the run,
        resumed ones included)."""
        tc = self.config.train
        if tc.warmup_steps and step < tc.warmup_steps:
            return (step + 1) / tc.warmup_steps
        if tc.lr_schedule == "constant":
            return 1.0
        progress = self._time_progress
        if self.total_steps < 10**9:
            span = max(1, self.total_steps - tc.warmup_steps)
            progress = max(progress, (step - tc.warmup_steps) / span)
        progress = min(1.0, progress)
        if tc.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0 - progress

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
            _jsonl(self.run_dir / "metrics.jsonl", {"step": self.step, "checkpoint_error": str(e)})
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

    # ------------------------------------------------------------------ one step
    def _model_fn(self) -> Callable[..., Tensor]:
        module = self.ddp if self.ddp is not None else self.model
        if self.config.train.compile and self._compiled is None:
            self._compiled = torch.compile(module)
        return self._compiled if self._compiled is not None else module  # a compiled module has no bool()

    def _model_kwargs(self, y: Tensor, drop: Tensor | None = None) -> dict[str, Tensor]:
        """``{"y": labels}`` for class-conditional models, with the null label where ``drop`` is True
        (label dropout for classifier-free guidance); ``{}`` otherwise."""
        num_classes = self.config.model.num_classes
        if num_classes is None:
            return {}
        if drop is not None:
            y = torch.where(drop, torch.full_like(y, num_classes), y)
        return {"y": y}

    def train_step(self) -> dict[str, float] | None:
        """One optimizer step over ``grad_accum`` micro-batches. Returns its metrics, or None if skipped."""
        tc = self.config.train
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        model = self._model_fn()
        # t, noise and label dropout are drawn for the whole batch first, then sliced per micro-batch: a step
        # is the same computation whatever grad_accum is (micro-batches take consecutive data positions too).
        c, s = self.config.model.in_channels, self.config.data.image_size
        # t ~ p with importance weights 1/(T p_t) (uniform: exactly diffusion.sample_timesteps, weights 1).
        t_all, w_all = self.timestep_sampler.sample(tc.batch_size, self.device, self.gen)
        noise_all = torch.randn((tc.batch_size, c, s, s), generator=self.gen, device=self.device)
        drop_all = torch.rand((tc.batch_size,), generator=self.gen, device=self.device) < tc.label_dropout
        if self.dist.enabled:
            # Every rank drew the same global-batch randomness (same generator, seed and calls) and keeps the
            # positions it holds data for: Batches gives rank r the global positions r, r + W, r + 2W, … of each
            # step, so W ranks compute exactly the single-process step (DDP averages their equal shares).
            own = dist_lib.rank_slice(tc.batch_size, self.dist.rank, self.dist.world_size)
            t_all, w_all, drop_all = t_all[own], w_all[own], drop_all[own]
            noise_all = noise_all[own].contiguous()
        total = 0.0
        for k in range(tc.grad_accum):
            sl = slice(k * self.micro_batch, (k + 1) * self.micro_batch)
            x, y = next(self.batches)
            x = x.to(self.device, non_blocking=True)
            if tc.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            kwargs = self._model_kwargs(y.to(self.device), drop_all[sl])
            # DDP all-reduces gradients in the last micro-batch's backward only.
            last = k == tc.grad_accum - 1
            with contextlib.nullcontext() if self.ddp is None or last else self.ddp.no_sync():
                with autocast_context(self.precision, self.device):
                    terms = self.diffusion.training_losses(
                        model, x, t_all[sl], noise_all[sl], model_kwargs=kwargs
                    )
                # Each micro-batch's mean is divided by the number of micro-batches: the gradient equals that of
                # the mean loss over the whole batch.
                self.timestep_sampler.update_with_losses(t_all[sl], terms["loss"].detach())
                loss = (terms["loss"] * w_all[sl]).mean() / tc.grad_accum
                self.scaler.scale(loss).backward()
            total += float(loss.detach())
        if self.dist.enabled:  # the global batch's mean loss (every rank's share is the same size)
            total = float(dist_lib.all_reduce_sum([total], self.device)[0]) / self.dist.world_size
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = tc.grad_clip if tc.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        if not (math.isfinite(total) and math.isfinite(grad_norm)):
            # fp16 with a finite loss: the gradient scaler overflowed and backs off below; that is not the model's
            # fault, so it does not count towards max_nonfinite until the scale is down to 1.
            overflow = self.scaler.is_enabled() and math.isfinite(total) and self.scaler.get_scale() > 1.0
            self.nonfinite_in_a_row += 0 if overflow else 1
            self.nonfinite_total += 1
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update()  # fp16 overflow: the scaler backs off
            if self.nonfinite_in_a_row > tc.max_nonfinite:
                self._stop_reason = "nonfinite"
            return None
        self.nonfinite_in_a_row = 0
        lr = self.optimizer.param_groups[0]["lr"]  # this step's (the scheduler sets the next one's below)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        return {"loss": total, "grad_norm": grad_norm, "lr": lr, "images": tc.batch_size}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def validation_loss(self, model: nn.Module | None = None) -> float | None:
        """Mean training loss on the held-out images with fixed t and noise (comparable across steps)."""
        if self.val_data is None or len(self.val_data) == 0:
            return None
        model = model or self.model
        was_training = model.training
        model.eval()
        tc = self.config.train
        g = torch.Generator(self.device).manual_seed(tc.seed + 12345)
        vb = tc.batch_size // tc.grad_accum  # the one-process micro-batch: the same images on any ranks
        n = min(len(self.val_data), tc.val_batches * vb)
        total, count = 0.0, 0
        for start in range(0, n, vb):
            idx = torch.arange(start, min(n, start + vb))
            x = data_lib.to_float(self.val_data.images[idx]).to(self.device)
            y = self.val_data.labels[idx].to(self.device)
            t = self.diffusion.sample_timesteps(x.shape[0], self.device, g)
            noise = torch.randn(x.shape, generator=g, device=self.device)
            with autocast_context(self.precision, self.device):
                terms = self.diffusion.training_losses(model, x, t, noise, model_kwargs=self._model_kwargs(y))
            total += float(terms["loss"].sum())
            count += x.shape[0]
        model.train(was_training)
        return total / count

    @torch.no_grad()
    def sample_grid(self, path: Path | None = None) -> Tensor:
        """Samples from fixed noise with the EMA model (the same x_T every time, so grids are comparable)."""
        from .sampling import sample
        from .viz import save_grid

        mc, sc = self.config.model, self.config.sample
        n = self.config.train.sample_n
        g = torch.Generator(self.device).manual_seed(self.config.train.seed + 777)
        noise = torch.randn(
            (n, mc.in_channels, self.config.data.image_size, self.config.data.image_size),
            generator=g,
            device=self.device,
        )
        fn = self.sampling_model(self.ema.model)
        with autocast_context(self.precision, self.device):
            x = sample(
                fn,
                self.diffusion,
                None,
                method=sc.method,
                steps=sc.steps,
                eta=sc.eta if sc.method == "ddim" else 0.0,
                generator=g,
                noise=noise,
                clip_denoised=sc.clip_denoised,
            )
        if path is not None:
            save_grid(x, path)
        return x

    def sampling_model(self, model: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
        """``model`` as the ``(x_t, t)`` callable samplers take (class-conditional: one class per row)."""
        num_classes = self.config.model.num_classes
        if num_classes is None:
            return model

        def fn(x: Tensor, t: Tensor) -> Tensor:
            y = torch.arange(x.shape[0], device=x.device) % num_classes
            return model(x, t, y)

        return fn

    # ------------------------------------------------------------------ loop
    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM ask the loop to checkpoint and stop at the next step boundary."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            self._stop_reason = signal.Signals(signum).name

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    @contextlib.contextmanager
    def _thread_tuning(self, metrics: Path) -> Iterator[ThreadTuner | None]:
        """``train.threads=auto`` on the CPU: a :class:`~ddpm.threads.ThreadTuner` that times each training step,
        each of its choices a ``threads`` record in metrics.jsonl; torch's thread count is restored when fit()
        ends. None otherwise (a fixed count was set in ``__init__``)."""
        if self.config.train.threads != "auto" or self.device.type != "cpu":
            yield None
            return

        def log(choice: Choice) -> None:
            rec = {"step": self.step, "threads": choice.threads, "threads_reason": choice.reason}
            _jsonl(metrics, {**rec, "step_s": {str(k): v for k, v in choice.step_s.items()}})

        with thread_scope("auto", self.device, ThreadTuner(on_choice=log)) as tuner:
            yield tuner

    def _validate(self) -> float | None:
        val = dist_lib.broadcast_float(self.validation_loss(), device=self.device)  # ranks decide as rank 0
        if val is None:
            return None
        tc = self.config.train
        if val < self.best_val - tc.early_stopping_min_delta:
            self.best_val, self.best_step, self.bad_validations = val, self.step, 0
            if tc.early_stopping_patience is not None:
                self._best_weights = (
                    copy.deepcopy(self.model.state_dict()),
                    copy.deepcopy(self.ema.state_dict()),
                )
        else:
            self.bad_validations += 1
            if tc.early_stopping_patience is not None and self.bad_validations >= tc.early_stopping_patience:
                self._stop_reason = "early_stopping"
        return val

    def _should_stop(self, deadline: float) -> bool:
        """Whether to stop before the next step (a signal, early stopping, non-finite losses or the time limit),
        agreed by all ranks under torch.distributed: a signal or the deadline may reach one rank before another."""
        out_of_time = self.clock() >= deadline
        if self.dist.enabled:
            stop = self._stop_reason is not None
            flags = dist_lib.all_reduce_sum([float(out_of_time), float(stop)], self.device)
            out_of_time = bool(flags[0] > 0)
            if flags[1] > 0 and self._stop_reason is None:
                self._stop_reason = "SIGTERM"  # another rank was signalled
        if self._stop_reason is not None:
            return True
        if out_of_time:
            self._stop_reason = "max_minutes"
            return True
        return False

    def fit(self) -> dict[str, Any]:
        """Train until ``max_steps``/``epochs``, ``max_minutes``, early stopping or a signal; returns a summary.

        ``max_minutes`` is the whole run's budget: a resumed run trains for what its earlier invocations left.
        The run directory's lock is released when this returns or raises.
        """
        if self._lock is not None:
            self._lock.acquire()  # again, after close() or an earlier fit()
        try:
            return self._fit()
        finally:
            self.run_progress.elapsed_s = self._elapsed()
            self._fit_clock = None
            self.close()

    def close(self) -> None:
        """Release the run directory's lock (a no-op when not held); :meth:`fit` takes it again."""
        lock = getattr(self, "_lock", None)  # None when __init__ failed early
        if lock is not None:
            lock.release()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _elapsed(self) -> float:
        """Training wall-clock seconds so far, over every :meth:`fit` of the run (``train.max_minutes`` counts)."""
        if self._fit_clock is None:
            return self.run_progress.elapsed_s
        base, start = self._fit_clock
        return base + self.clock() - start

    def _fit(self) -> dict[str, Any]:
        tc = self.config.train
        metrics = self.run_dir / "metrics.jsonl"
        base, start = self.run_progress.elapsed_s, self.clock()
        self._fit_clock = (base, start)
        deadline = start + 60 * tc.max_minutes - base if tc.max_minutes else math.inf
        steps_per_epoch = max(1, len(self.batches) // tc.grad_accum)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            total = self.total_steps if self.total_steps < 10**9 else None
            bar = tqdm(total=total, initial=self.step, desc="train", dynamic_ncols=True, file=sys.stderr)
        window_loss, window_n, window_images, window_start = 0.0, 0, 0, self.clock()
        last_saved = self.step if latest_checkpoint(self.ckpt_dir) else -1
        with self._signals(), self._thread_tuning(metrics) as tuner:
            while self.step < self.total_steps:
                if self._should_stop(deadline):
                    break
                if tc.max_minutes:
                    self._time_progress = self._elapsed() / (60 * tc.max_minutes)
                out = tuner.run(self.train_step) if tuner is not None else self.train_step()
                if out is None:
                    _jsonl(
                        metrics,
                        {"step": self.step, "nonfinite": True, "nonfinite_total": self.nonfinite_total},
                    )
                    continue
                window_loss += out["loss"]
                window_n += 1
                window_images += out["images"]
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{out['loss']:.4f}", **_threads_postfix(tuner), refresh=False)
                now = self.clock()
                last = self.step == self.total_steps or self._stop_reason is not None or now >= deadline
                if self.step % tc.log_every == 0 or last:
                    rec = {
                        "step": self.step,
                        "epoch": self.step / steps_per_epoch,
                        "loss": window_loss / window_n,
                        "lr": out["lr"],
                        "grad_norm": out["grad_norm"],
                        "img_per_s": window_images / max(now - window_start, 1e-9),
                        "time_s": base + now - start,  # over every fit() of the run
                    }
                    _jsonl(metrics, rec)
                    window_loss, window_n, window_images, window_start = 0.0, 0, 0, now
                end_of_epoch = self.step % steps_per_epoch == 0
                if (tc.val_every and self.step % tc.val_every == 0) or (
                    end_of_epoch and self.val_data is not None
                ):
                    val = self._validate()
                    if val is not None:
                        _jsonl(metrics, {"step": self.step, "val_loss": val, "best_val": self.best_val})
                        if bar is not None:
                            bar.set_postfix(
                                loss=f"{out['loss']:.4f}",
                                val=f"{val:.4f}",
                                **_threads_postfix(tuner),
                                refresh=False,
                            )
                if tc.sample_every and self.step % tc.sample_every == 0 and self.dist.is_main:
                    self.sample_grid(self.run_dir / "samples" / f"step-{self.step:07d}.png")
                if tc.checkpoint_every and self.step % tc.checkpoint_every == 0 and self._periodic_save():
                    last_saved = self.step
        if bar is not None:
            bar.close()
        if self._stop_reason == "nonfinite":
            self._finish(last_saved)
            raise TrainingError(
                f"stopped: {self.nonfinite_in_a_row} non-finite losses or gradients in a row at step {self.step} "
                f"(lower train.lr or use train.precision=fp32); the last good state is checkpointed"
            )
        if self._stop_reason == "early_stopping" and self._best_weights is not None:
            self.model.load_state_dict(self._best_weights[0])
            self.ema.model.load_state_dict(self._best_weights[1])
            self.log(
                f"early stopping at step {self.step}: restored the best weights (step {self.best_step}, "
                f"val loss {self.best_val:.5f})"
            )
        return self._finish(last_saved)

    def _finish(self, last_saved: int) -> dict[str, Any]:
        try:
            ckpt = self.save() if last_saved != self.step or self._stop_reason == "early_stopping" else None
        except CheckpointError as e:
            newest = latest_checkpoint(self.ckpt_dir)
            raise TrainingError(
                f"{e}; the newest complete checkpoint is {newest.name if newest else 'none'}"
            ) from None
        from .viz import loss_stats, loss_stats_markdown, plot_losses, read_metrics

        records = read_metrics(self.run_dir / "metrics.jsonl") if self.dist.is_main else []
        if any("loss" in r for r in records):
            plot_losses(
                records, self.run_dir / "loss_curve.png", title=f"{self.config.preset or 'ddpm'} loss"
            )
            (self.run_dir / "loss_stats.md").write_text(loss_stats_markdown(records))
        summary = {
            "step": self.step,
            "stop_reason": self._stop_reason or "completed",
            "checkpoint": str(ckpt or latest_checkpoint(self.ckpt_dir)),
            "best_val": self.best_val if math.isfinite(self.best_val) else None,
            "best_step": self.best_step,
            "nonfinite_total": self.nonfinite_total,
            "train_loss": loss_stats(records, "loss"),
        }
        _jsonl(
            self.run_dir / "metrics.jsonl",
            {"step": self.step, "event": "end", **{k: v for k, v in summary.items() if k != "train_loss"}},
        )
        return summary


def _threads_postfix(tuner: ThreadTuner | None) -> dict[str, int]:
    """The progress bar's ``threads=N`` under ``train.threads=auto`` (the count in use, also while measuring)."""
    return {"threads": tuner.threads} if tuner is not None else {}


def _rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """Seed of rank ``rank``'s global RNG (dropout) in a data-parallel run: distinct per rank and per resume step."""
    return (seed * 1_000_003 + step * 7_919 + rank + 1) % 2**63


def _record_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return sys.maxsize  # a line cut short by a crash: dropped on resume


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default
