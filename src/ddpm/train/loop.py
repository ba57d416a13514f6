"""The training loop: :meth:`fit` with its logging, validation and early stopping, sample grids, checkpoint
cadence, stopping on signals, the time budget or non-finite losses, thread tuning, and the end-of-run summary.

A mixin of :class:`~ddpm.train.trainer.Trainer`, kept apart from its setup and single step.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import distributed as dist_lib
from ..checkpoint import (
    CheckpointError,
    latest_checkpoint,
)
from ..threads import Choice, ThreadTuner, thread_scope
from .log import append_record
from .setup import TrainingError

if TYPE_CHECKING:
    from .trainer import Trainer


class TrainLoop:
    """``fit()`` and what it needs around one :meth:`train_step` (mixed into :class:`~ddpm.train.trainer.Trainer`)."""

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
            append_record(metrics, {**rec, "step_s": {str(k): v for k, v in choice.step_s.items()}})

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
                    append_record(
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
                    append_record(metrics, rec)
                    window_loss, window_n, window_images, window_start = 0.0, 0, 0, now
                end_of_epoch = self.step % steps_per_epoch == 0
                if (tc.val_every and self.step % tc.val_every == 0) or (
                    end_of_epoch and self.val_data is not None
                ):
                    val = self._validate()
                    if val is not None:
                        append_record(
                            metrics, {"step": self.step, "val_loss": val, "best_val": self.best_val}
                        )
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
        from ..viz import loss_stats, loss_stats_markdown, plot_losses, read_metrics

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
        append_record(
            self.run_dir / "metrics.jsonl",
            {"step": self.step, "event": "end", **{k: v for k, v in summary.items() if k != "train_loss"}},
        )
        return summary


def _threads_postfix(tuner: ThreadTuner | None) -> dict[str, int]:
    """The progress bar's ``threads=N`` under ``train.threads=auto`` (the count in use, also while measuring)."""
    return {"threads": tuner.threads} if tuner is not None else {}
