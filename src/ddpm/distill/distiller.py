"""The distillation run: :class:`Distiller`, a :class:`~ddpm.train.Trainer` whose loss is a distillation loss, so
the student gets the trainer's EMA, optimizer, time budget, signals, atomic checkpoints with exact resume and
``metrics.jsonl``; and :func:`distill`, the library entry point of ``ddpm distill``.

The student is a run directory like any other (``ddpm sample --run STUDENT`` samples it at its distilled steps);
``distill.json`` says how it was made, and ``rounds/N-steps/`` keeps each finished progressive round's student. Each checkpoint's ``state.pt`` also holds the round and the current teacher's
weights (key ``distill``), so a resumed run continues the round it was cut in without the teacher's run directory.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .. import data as data_lib
from ..builders import build_diffusion, build_model
from ..checkpoint import CheckpointError, load_checkpoint, load_weights_into, save_checkpoint
from ..config import Config, apply_overrides, config_from_dict, config_to_dict
from ..runlog import append as append_record
from ..train import Trainer
from .consistency import ConsistencyDistillation
from .progressive import ProgressiveDistillation
from .settings import DistillConfig, DistillError, default_teacher_steps, student_config

__all__ = ["Distiller", "distill"]


class Distiller(Trainer):
    """Distil ``teacher_weights`` (a state dict of the student's architecture) into a student in ``run_dir``.

    ``config`` is the student's run config (:func:`~ddpm.distill.settings.student_config`), ``dc`` the method.
    A fresh student starts from the teacher's weights (Algorithm 2's θ ← η; CD's θ⁻ ← θ); on ``resume`` the
    student, its EMA, the round and the teacher come from the newest checkpoint (``teacher_weights`` unused).
    """

    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        dc: DistillConfig,
        teacher_weights: dict[str, Tensor] | None = None,
        resume: bool = False,
        data: tuple[data_lib.ImageData, data_lib.ImageData | None] | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not resume and teacher_weights is None:
            raise DistillError("a fresh distillation needs the teacher's weights")
        self.dc = dc
        self.round = 0
        self._teacher_weights = teacher_weights
        self._saved: dict[str, Any] | None = None
        super().__init__(config, run_dir, resume=resume, data=data, progress=progress, log=log)

    def _setup(
        self,
        config: Config,
        resume: bool,
        data: tuple[data_lib.ImageData, data_lib.ImageData | None] | None,
    ) -> None:
        super()._setup(config, resume, data)
        if resume:
            if self._saved is None:
                raise DistillError(f"{self.run_dir}: its checkpoint holds no distillation state")
            self.round = int(self._saved["round"])
            weights = self._saved["teacher"]
        else:
            weights = self._teacher_weights or {}
            load_weights_into(self.model, weights, "the teacher's weights")
            load_weights_into(self.ema.model, weights, "the teacher's weights")
            if self.dist.is_main:
                self.dc.save(self.run_dir)
        teacher = build_model(self.config).to(self.device)
        load_weights_into(teacher, weights, "the teacher's weights")
        teacher.eval().requires_grad_(False)
        self._teacher_weights = None
        student_d = self.diffusion
        teacher_d = build_diffusion(replace(self.config.diffusion, prediction=self.dc.teacher_prediction))  # type: ignore[arg-type]
        self.method: ProgressiveDistillation | ConsistencyDistillation
        if self.dc.method == "progressive":
            steps = self.dc.teacher_steps // 2 ** (self.round + 1)
            first = self.round == 0
            self.method = ProgressiveDistillation(
                teacher, teacher_d if first else student_d, student_d, steps, self.dc.weighting, self.dc.clip
            )
        else:
            self.method = ConsistencyDistillation(
                teacher,
                teacher_d,
                student_d,
                self.ema.model,
                self.dc.cd_points,
                self.dc.cd_spacing,
                self.dc.clip,
            )
        if not resume:
            self._log_round()

    # ------------------------------------------------------------------ the trainer's hooks
    def batch_losses(
        self, model: Callable[..., Tensor], x: Tensor, t: Tensor, noise: Tensor, kwargs: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """The method's per-example loss; its positions on the grid are drawn from the run's generator."""
        pos = self.method.sample_positions(x.shape[0], self.gen)
        return {"loss": self.method.losses(model, x, noise, pos, **kwargs)}

    def train_step(self) -> dict[str, float] | None:
        if self._round_due():
            self._next_round()
        return super().train_step()

    def extra_state(self) -> dict[str, Any]:
        teacher = self.method.teacher
        assert isinstance(teacher, nn.Module)  # noqa: S101 - built in _setup
        sd = {k: v.detach().cpu().clone() for k, v in teacher.state_dict().items()}
        return {"distill": {"round": self.round, "teacher": sd}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        saved = state.get("distill")
        ok = (
            isinstance(saved, dict)
            and isinstance(saved.get("round"), int)
            and isinstance(saved.get("teacher"), dict)
        )
        if not ok:
            raise CheckpointError(
                f"{self.run_dir}: its checkpoint holds no distillation state (round, teacher)"
            )
        self._saved = saved

    # ------------------------------------------------------------------ rounds (progressive only)
    def _round_due(self) -> bool:
        """Whether the current round is over: ``round_steps`` optimizer steps each, or else an equal share of
        ``train.max_minutes`` each. The last round runs to the end of the budget."""
        if self.dc.method != "progressive" or self.round >= self.dc.rounds - 1:
            return False
        if self.dc.round_steps is not None:
            return self.step >= (self.round + 1) * self.dc.round_steps
        minutes = self.config.train.max_minutes
        if minutes is None:  # a step budget alone: split evenly
            total = self.config.train.max_steps or 0
            return self.step >= (self.round + 1) * math.ceil(total / self.dc.rounds)
        return self.elapsed() >= (self.round + 1) * 60 * minutes / self.dc.rounds

    def _next_round(self) -> None:
        """Keep this round's student (``rounds/N-steps``), then η ← θ (the EMA student becomes the teacher),
        θ ← η, N ← N/2."""
        assert isinstance(self.method, ProgressiveDistillation)  # noqa: S101 - _round_due says so
        self._save_round_student(self.method.steps)
        self.model.load_state_dict(self.ema.model.state_dict())
        self.method.next_round(copy.deepcopy(self.ema.model))
        self.round += 1
        self._log_round()

    def _save_round_student(self, steps: int) -> None:
        """``run_dir/rounds/N-steps``: the finished round's N-step student as a run of its own (``ddpm sample
        --run`` samples it at N steps). Failing to write it is reported, not fatal."""
        if not self.dist.is_main:
            return
        cfg = replace(self.config, sample=replace(self.config.sample, steps=steps))
        root = self.run_dir / "rounds" / f"{steps}-steps"
        try:
            root.mkdir(parents=True, exist_ok=True)
            (root / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
            save_checkpoint(
                root / "checkpoints", self.step, cfg, self.model.state_dict(), self.ema.state_dict()
            )
        except (CheckpointError, OSError) as e:
            self.log(f"warning: could not keep the {steps}-step student: {e}")

    def _log_round(self) -> None:
        if not self.dist.is_main:
            return
        rec: dict[str, Any] = {"step": self.step, "distill_round": self.round, "method": self.dc.method}
        if isinstance(self.method, ProgressiveDistillation):
            rec.update(student_steps=self.method.steps, teacher_steps=self.method.teacher_steps)
        append_record(self.run_dir / "metrics.jsonl", rec)
        self.log(f"distill: round {self.round + 1}/{self.dc.rounds} " + (
            f"({self.method.teacher_steps} → {self.method.steps} steps)"
            if isinstance(self.method, ProgressiveDistillation) else f"(consistency, {self.dc.steps}-step student)"
        ))  # fmt: skip


def distill(
    teacher: str | Path | None,
    out: str | Path,
    steps: int | None = None,
    method: str = "progressive",
    *,
    max_minutes: float | None = None,
    max_steps: int | None = None,
    round_steps: int | None = None,
    teacher_steps: int | None = None,
    overrides: Iterable[str] = (),
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    data: tuple[data_lib.ImageData, data_lib.ImageData | None] | None = None,
) -> dict[str, Any]:
    """Distil the run ``teacher`` (its EMA weights) into a ``steps``-step student in ``out``; returns the fit
    summary (see :func:`ddpm.train.loop.fit`). With ``resume`` the run in ``out`` continues from its newest
    checkpoint with its own ``distill.json`` and ``config.json`` (a new ``max_minutes`` / ``max_steps`` replaces
    the budget; ``teacher`` and ``steps`` may be None)."""
    out = Path(out)
    if resume:
        dc = DistillConfig.load(out)
        cfg = _saved_config(out)
        budget = [f"train.max_minutes={max_minutes}"] if max_minutes is not None else []
        budget += [f"train.max_steps={max_steps}"] if max_steps is not None else []
        cfg = apply_overrides(cfg, [*budget, *overrides])
        return Distiller(cfg, out, dc, resume=True, progress=progress, log=log, data=data).fit()
    if teacher is None or steps is None:
        raise DistillError("a fresh distillation needs the teacher run and the student's steps")
    ck = load_checkpoint(teacher, with_state=False)
    weights = ck.ema if ck.ema is not None else ck.model
    tc = ck.config
    dc = DistillConfig(
        method=method,  # type: ignore[arg-type]  # checked by DistillConfig
        steps=steps,
        teacher=str(teacher),
        teacher_checkpoint=str(ck.path),
        teacher_prediction=tc.diffusion.prediction,
        teacher_steps=teacher_steps or default_teacher_steps(steps),
        round_steps=round_steps,
        clip=tc.sample.clip_denoised,
    )
    cfg = student_config(tc, dc, max_steps=max_steps, max_minutes=max_minutes, overrides=overrides)
    if cfg.model != tc.model:
        raise DistillError("the student must keep the teacher's network (model.* cannot be overridden)")
    return Distiller(cfg, out, dc, teacher_weights=weights, progress=progress, log=log, data=data).fit()


def _saved_config(out: Path) -> Config:
    path = out / "config.json"
    if not path.is_file():
        raise DistillError(f"nothing to resume: {path} does not exist")
    try:
        return config_from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, RecursionError) as e:
        raise DistillError(f"{path} is not valid JSON: {e}") from None
