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
from ..runlog import append as append_record
from ..threads import Choice, ThreadTuner, thread_scope
from . import checkpointing
from .fid_monitor import FIDMonitor
from .setup import TrainingError

if TYPE_CHECKING:
    from .trainer import Trainer


@contextlib.contextmanager
def signals(tr: Trainer) -> Iterator[None]:
    """SIGINT/SIGTERM ask the loop to checkpoint and stop at the next step boundary."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        tr._stop_reason = signal.Signals(signum).name

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def thread_tuning(tr: Trainer, metrics: Path) -> Iterator[ThreadTuner | None]:
    """``train.threads=auto`` on the CPU: a :class:`~ddpm.threads.ThreadTuner` that times each training step,
    each of its choices a ``threads`` record in metrics.jsonl; torch's thread count is restored when fit()
    ends. None otherwise (a fixed count was set in ``__init__``)."""
    if tr.config.train.threads != "auto" or tr.device.type != "cpu":
        yield None
        return

    def log(choice: Choice) -> None:
        rec = {"step": tr.step, "threads": choice.threads, "threads_reason": choice.reason}
        append_record(metrics, {**rec, "step_s": {str(k): v for k, v in choice.step_s.items()}})

    with thread_scope("auto", tr.device, ThreadTuner(on_choice=log)) as tuner:
        yield tuner


def validate(tr: Trainer) -> float | None:
    val = dist_lib.broadcast_float(tr.validation_loss(), device=tr.device)  # ranks decide as rank 0
    if val is None:
        return None
    tc = tr.config.train
    if val < tr.best_val - tc.early_stopping_min_delta:
        tr.best_val, tr.best_step, tr.bad_validations = val, tr.step, 0
        if tc.early_stopping_patience is not None:
            tr._best_weights = (
                copy.deepcopy(tr.model.state_dict()),
                copy.deepcopy(tr.ema.state_dict()),
            )
    else:
        tr.bad_validations += 1
        if tc.early_stopping_patience is not None and tr.bad_validations >= tc.early_stopping_patience:
            tr._stop_reason = "early_stopping"
    return val


def should_stop(tr: Trainer, deadline: float) -> bool:
    """Whether to stop before the next step (a signal, early stopping, non-finite losses or the time limit),
    agreed by all ranks under torch.distributed: a signal or the deadline may reach one rank before another."""
    out_of_time = tr.clock() >= deadline
    if tr.dist.enabled:
        stop = tr._stop_reason is not None
        flags = dist_lib.all_reduce_sum([float(out_of_time), float(stop)], tr.device)
        out_of_time = bool(flags[0] > 0)
        if flags[1] > 0 and tr._stop_reason is None:
            tr._stop_reason = "SIGTERM"  # another rank was signalled
    if tr._stop_reason is not None:
        return True
    if out_of_time:
        tr._stop_reason = "max_minutes"
        return True
    return False


def fit(tr: Trainer) -> dict[str, Any]:
    """Train until ``max_steps``/``epochs``, ``max_minutes``, early stopping or a signal; returns a summary.

    ``max_minutes`` is the whole run's budget: a resumed run trains for what its earlier invocations left.
    The run directory's lock is released when this returns or raises.
    """
    if tr._lock is not None:
        tr._lock.acquire()  # again, after close() or an earlier fit()
    try:
        return run(tr)
    finally:
        tr.run_progress.elapsed_s = tr.elapsed()
        tr._fit_clock = None
        tr.close()


def run(tr: Trainer) -> dict[str, Any]:
    """The loop itself (:func:`fit` without the lock): step, log, validate, sample, checkpoint, stop."""
    tc = tr.config.train
    metrics = tr.run_dir / "metrics.jsonl"
    base, start = tr.run_progress.elapsed_s, tr.clock()
    tr._fit_clock = (base, start)
    deadline = start + 60 * tc.max_minutes - base if tc.max_minutes else math.inf
    steps_per_epoch = max(1, len(tr.batches) // tc.grad_accum)
    bar = None
    if tr.progress:
        from tqdm.auto import tqdm

        total = tr.total_steps if tr.total_steps < 10**9 else None
        bar = tqdm(total=total, initial=tr.step, desc="train", dynamic_ncols=True, file=sys.stderr)
    window_loss, window_n, window_images, window_start = 0.0, 0, 0.0, tr.clock()
    last_saved = tr.step if latest_checkpoint(tr.ckpt_dir) else -1
    fid = FIDMonitor(tr) if tc.fid_every else None
    with signals(tr), thread_tuning(tr, metrics) as tuner:
        while tr.step < tr.total_steps:
            if should_stop(tr, deadline):
                break
            if tc.max_minutes:
                tr._time_progress = tr.elapsed() / (60 * tc.max_minutes)
            out = tuner.run(tr.train_step) if tuner is not None else tr.train_step()
            if out is None:
                append_record(
                    metrics,
                    {"step": tr.step, "nonfinite": True, "nonfinite_total": tr.nonfinite_total},
                )
                continue
            window_loss += out["loss"]
            window_n += 1
            window_images += out["images"]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{out['loss']:.4f}", **_threads_postfix(tuner), refresh=False)
            now = tr.clock()
            last = tr.step == tr.total_steps or tr._stop_reason is not None or now >= deadline
            if tr.step % tc.log_every == 0 or last:
                rec = {
                    "step": tr.step,
                    "epoch": tr.step / steps_per_epoch,
                    "loss": window_loss / window_n,
                    "lr": out["lr"],
                    "grad_norm": out["grad_norm"],
                    "img_per_s": window_images / max(now - window_start, 1e-9),
                    "time_s": base + now - start,  # over every fit() of the run
                }
                append_record(metrics, rec)
                window_loss, window_n, window_images, window_start = 0.0, 0, 0.0, now
            end_of_epoch = tr.step % steps_per_epoch == 0
            if (tc.val_every and tr.step % tc.val_every == 0) or (end_of_epoch and tr.val_data is not None):
                val = validate(tr)
                if val is not None:
                    append_record(metrics, {"step": tr.step, "val_loss": val, "best_val": tr.best_val})
                    if bar is not None:
                        bar.set_postfix(
                            loss=f"{out['loss']:.4f}",
                            val=f"{val:.4f}",
                            **_threads_postfix(tuner),
                            refresh=False,
                        )
            if fid is not None and fid.due():
                rec = fid.evaluate()
                append_record(metrics, rec)
                window_start += rec["fid_s"] + rec.get("fid_ref_s", 0.0)  # not training time: not in img/s
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{out['loss']:.4f}",
                        fid=f"{rec['fid']:.2f}",
                        **_threads_postfix(tuner),
                        refresh=False,
                    )
            if tc.sample_every and tr.step % tc.sample_every == 0 and tr.dist.is_main:
                tr.sample_grid(tr.run_dir / "samples" / f"step-{tr.step:07d}.png")
            if tc.checkpoint_every and tr.step % tc.checkpoint_every == 0 and checkpointing.periodic_save(tr):
                last_saved = tr.step
    if bar is not None:
        bar.close()
    if tr._stop_reason == "nonfinite":
        finish(tr, last_saved)
        raise TrainingError(
            f"stopped: {tr.nonfinite_in_a_row} non-finite losses or gradients in a row at step {tr.step} "
            f"(lower train.lr or use train.precision=fp32); the last good state is checkpointed"
        )
    if tr._stop_reason == "early_stopping" and tr._best_weights is not None:
        tr.model.load_state_dict(tr._best_weights[0])
        tr.ema.model.load_state_dict(tr._best_weights[1])
        tr.log(
            f"early stopping at step {tr.step}: restored the best weights (step {tr.best_step}, "
            f"val loss {tr.best_val:.5f})"
        )
    return finish(tr, last_saved)


def finish(tr: Trainer, last_saved: int) -> dict[str, Any]:
    try:
        ckpt = (
            checkpointing.save(tr) if last_saved != tr.step or tr._stop_reason == "early_stopping" else None
        )
    except CheckpointError as e:
        newest = latest_checkpoint(tr.ckpt_dir)
        raise TrainingError(
            f"{e}; the newest complete checkpoint is {newest.name if newest else 'none'}"
        ) from None
    from ..viz import loss_stats, loss_stats_markdown, plot_losses, read_metrics

    records = read_metrics(tr.run_dir / "metrics.jsonl") if tr.dist.is_main else []
    if any("loss" in r for r in records):
        plot_losses(records, tr.run_dir / "loss_curve.png", title=f"{tr.config.preset or 'ddpm'} loss")
        (tr.run_dir / "loss_stats.md").write_text(loss_stats_markdown(records))
    summary = {
        "step": tr.step,
        "stop_reason": tr._stop_reason or "completed",
        "checkpoint": str(ckpt or latest_checkpoint(tr.ckpt_dir)),
        "best_val": tr.best_val if math.isfinite(tr.best_val) else None,
        "best_step": tr.best_step,
        **({"best_fid": tr.best_fid, "best_fid_step": tr.best_fid_step} if tr.best_fid_step >= 0 else {}),
        "nonfinite_total": tr.nonfinite_total,
        "train_loss": loss_stats(records, "loss"),
    }
    append_record(
        tr.run_dir / "metrics.jsonl",
        {"step": tr.step, "event": "end", **{k: v for k, v in summary.items() if k != "train_loss"}},
    )
    return summary


def _threads_postfix(tuner: ThreadTuner | None) -> dict[str, int]:
    """The progress bar's ``threads=N`` under ``train.threads=auto`` (the count in use, also while measuring)."""
    return {"threads": tuner.threads} if tuner is not None else {}
