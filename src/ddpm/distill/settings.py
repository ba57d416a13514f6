"""What a distillation run is: :class:`DistillConfig` (the method, the student's steps, the teacher), kept as
``STUDENT/distill.json`` beside the student's ordinary ``config.json``, and the student's run config derived from
the teacher's (:func:`student_config`): same network and data, v- (or x₀-) prediction, sampled by DDIM on the
grid it was distilled for, and training settings suited to distillation.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from ..config import Config, apply_overrides
from .progressive import WEIGHTINGS, Weighting, rounds

__all__ = ["DistillConfig", "DistillError", "student_config", "default_teacher_steps", "FILENAME"]

FILENAME = "distill.json"
Method = Literal["progressive", "consistency"]


class DistillError(ValueError):
    """A distillation request that cannot run (bad steps, a missing or mismatched teacher); one line for the user."""


@dataclass(frozen=True)
class DistillConfig:
    """A distillation run.

    ``steps``: the student's sampling steps. Progressive: the teacher's DDIM takes ``teacher_steps`` (``steps``
    times a power of two) in the first round, each round halves them; ``round_steps`` optimizer steps per round
    (None: ``train.max_minutes`` split evenly over the rounds). Consistency: one teacher DDIM step between
    adjacent points of a ``cd_points``-point ``cd_spacing`` grid; the student is sampled at ``steps`` steps.
    """

    method: Method = "progressive"
    steps: int = 4
    teacher: str = ""  # the teacher's run directory (or checkpoint)
    teacher_checkpoint: str = ""  # the checkpoint its weights came from
    teacher_prediction: str = "eps"
    prediction: Literal["v", "x0"] = "v"
    teacher_steps: int = 64
    round_steps: int | None = None
    weighting: Weighting = "snr_trunc"
    clip: bool = True  # clip the teacher's x̂₀ (its sampler's sample.clip_denoised)
    cd_points: int = 40
    cd_spacing: str = "karras"

    def __post_init__(self) -> None:
        if self.method not in ("progressive", "consistency"):
            raise DistillError(
                f"unknown distillation method {self.method!r}; choose progressive or consistency"
            )
        if self.steps < 1:
            raise DistillError(f"--steps must be at least 1, got {self.steps}")
        if self.round_steps is not None and self.round_steps < 1:
            raise DistillError(f"round_steps must be at least 1, got {self.round_steps}")
        if self.weighting not in WEIGHTINGS:
            raise DistillError(f"unknown weighting {self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
        if self.method == "progressive":
            try:
                rounds(self.teacher_steps, self.steps)
            except ValueError as e:
                raise DistillError(str(e)) from None
        elif self.cd_points < 2:
            raise DistillError(f"cd_points must be at least 2, got {self.cd_points}")

    @property
    def rounds(self) -> int:
        """Progressive rounds (1 for consistency distillation)."""
        return rounds(self.teacher_steps, self.steps) if self.method == "progressive" else 1

    def save(self, run_dir: Path) -> None:
        (run_dir / FILENAME).write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> DistillConfig:
        path = run_dir / FILENAME
        if not path.is_file():
            raise DistillError(f"{run_dir} is not a distillation run (no {FILENAME})")
        try:
            raw = json.loads(path.read_text())
            return cls(**raw)
        except (json.JSONDecodeError, TypeError, RecursionError) as e:
            raise DistillError(f"{path} is corrupt: {' '.join(str(e).split())}") from None


def default_teacher_steps(steps: int, at_least: int = 64) -> int:
    """The smallest ``steps``·2^k ≥ ``at_least`` with k ≥ 1: the first round's teacher step count."""
    k = max(1, math.ceil(math.log2(at_least / steps))) if steps < at_least else 1
    return steps * 2**k


def student_config(
    teacher: Config,
    dc: DistillConfig,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    overrides: Iterable[str] = (),
) -> Config:
    """The student's run config: the teacher's network, data and schedule; ``dc.prediction``; DDIM (η = 0; η = 1
    for a multistep consistency student, whose steps re-noise) on the ``trailing`` grid at ``dc.steps``; constant
    lr 5e-4, EMA 0.999 (consistency: the target network's μ = 0.95, no warm-up), no validation or FID; then
    ``overrides`` (``--set``). Raises :class:`DistillError` when no budget is given."""
    if dc.method == "progressive" and dc.round_steps is not None:  # a smaller max_steps cuts the run short
        max_steps = min(max_steps or dc.rounds * dc.round_steps, dc.rounds * dc.round_steps)
    if max_steps is None and max_minutes is None:
        raise DistillError("give a budget: --max-steps, --max-minutes or --round-steps")
    consistency = dc.method == "consistency"
    t = teacher.train
    train = replace(
        t,
        lr=5e-4,
        warmup_steps=0,
        lr_schedule="constant",
        ema_decay=0.95 if consistency else 0.999,
        ema_warmup=not consistency,
        max_steps=max_steps,
        epochs=None,
        max_minutes=max_minutes,
        val_every=None,
        early_stopping_patience=None,
        sample_every=None,
        fid_every=None,
        label_dropout=t.label_dropout if teacher.model.num_classes is not None else 0.0,
    )
    sample = replace(
        teacher.sample,
        method="ddim",
        steps=dc.steps,
        eta=1.0 if consistency and dc.steps > 1 else 0.0,
        spacing="trailing",
    )
    diffusion = replace(teacher.diffusion, prediction=dc.prediction, timestep_sampler="uniform")
    cfg = replace(
        teacher,
        diffusion=diffusion,
        data=replace(teacher.data, val_fraction=0.0),
        train=train,
        sample=sample,
        source=f"{dc.method} distillation of {dc.teacher} to {dc.steps} steps",
    )
    return apply_overrides(cfg, list(overrides))
