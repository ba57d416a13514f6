"""The :class:`Trainer`: a run's setup (data, network, EMA, optimizer, lr schedule, DDP) and its single optimizer
step, validation loss and sample grids; the loop (:mod:`.loop`) and the checkpoints (:mod:`.checkpointing`) are
functions of a trainer that :meth:`Trainer.fit` and :meth:`Trainer.save` call.

>>> cfg = ddpm.recipes.get_recipe("tiny")
>>> Trainer(cfg, "runs/tiny").fit()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .. import data as data_lib
from .. import distributed as dist_lib
from ..builders import build_diffusion, build_model, resolve_config
from ..config import Config, ConfigError
from ..nn.params import weight_decay_groups
from ..resample import create_timestep_sampler
from ..runlock import RunLock
from ..runtime import autocast_context, resolve_device, resolve_precision
from . import checkpointing, loop
from .checkpointing import _rank_seed
from .ema import EMA
from .progress import TrainProgress, _ProgressField
from .setup import TrainingError, load_datasets, validate_config


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
    best_fid = _ProgressField()
    best_fid_step = _ProgressField()
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
        self.ddp: DistributedDataParallel | None = None
        if self.dist.enabled:
            # DDP broadcasts rank 0's weights (identical anyway: same seed) and averages gradients over the ranks.
            self.ddp = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,  # the U-Net's only buffers are constant sinusoid frequencies
            )
            # Dropout draws from the global RNG: each rank gets its own stream (the weights are initialised by now).
            torch.manual_seed(_rank_seed(tc.seed, self.dist.rank))
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            weight_decay_groups(self.model, tc.weight_decay),
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
            checkpointing.resume(self)
        else:
            checkpointing.start_fresh(self)
        if self.dist.is_main:
            dist_lib.barrier()

    @property
    def image_size(self) -> int:
        """The side of the training images (set by :func:`~ddpm.builders.resolve_config` from the data)."""
        size = self.config.data.image_size
        if size is None:  # resolve_config always sets it
            raise TrainingError("the resolved config has no data.image_size")
        return size

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

    def batch_losses(
        self, model: Callable[..., Tensor], x: Tensor, t: Tensor, noise: Tensor, kwargs: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Per-example loss terms [N] of one micro-batch (x [N, C, H, W] in [−1, 1], t [N], noise like x) under
        ``"loss"``: the diffusion's training loss. Distillation (:mod:`ddpm.distill`) overrides this."""
        return self.diffusion.training_losses(model, x, t, noise, model_kwargs=kwargs)

    def extra_state(self) -> dict[str, Any]:
        """More training state for ``state.pt`` (keys beside the trainer's own; tensors and plain containers):
        none here, a subclass's own (distillation: its round and teacher)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved, from a checkpoint's whole training state (on resume)."""

    def train_step(self) -> dict[str, float] | None:
        """One optimizer step over ``grad_accum`` micro-batches. Returns its metrics, or None if skipped."""
        tc = self.config.train
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        model = self._model_fn()
        # t, noise and label dropout are drawn for the whole batch first, then sliced per micro-batch: a step
        # is the same computation whatever grad_accum is (micro-batches take consecutive data positions too).
        c, s = self.config.model.in_channels, self.image_size
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
                    terms = self.batch_losses(model, x, t_all[sl], noise_all[sl], kwargs)
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
        from ..sampling import sample
        from ..viz import save_grid

        mc, sc = self.config.model, self.config.sample
        n = self.config.train.sample_n
        g = torch.Generator(self.device).manual_seed(self.config.train.seed + 777)
        noise = torch.randn(
            (n, mc.in_channels, self.image_size, self.image_size),
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

    def elapsed(self) -> float:
        """Training wall-clock seconds so far, over every :meth:`fit` of the run (``train.max_minutes`` counts)."""
        if self._fit_clock is None:
            return self.run_progress.elapsed_s
        base, start = self._fit_clock
        return base + self.clock() - start

    # ------------------------------------------------------------------ the loop and the checkpoints
    def fit(self) -> dict[str, Any]:
        """Train until ``max_steps``/``epochs``, ``max_minutes``, early stopping or a signal; returns a summary
        (see :func:`ddpm.train.loop.fit`). The run directory's lock is released when this returns or raises."""
        return loop.fit(self)

    def save(self) -> Path:
        """Write a checkpoint of the current step, atomically (see :func:`ddpm.train.checkpointing.save`)."""
        return checkpointing.save(self)

    def train_state(self) -> dict[str, Any]:
        """Everything but the weights that an exact resume needs (see :mod:`ddpm.train.checkpointing`)."""
        return checkpointing.train_state(self)

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
