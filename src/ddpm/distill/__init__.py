"""Few-step samplers from a trained model: progressive distillation (Salimans & Ho 2022) and consistency
distillation (Song et al. 2023), each a loss over model callables beside a :class:`~ddpm.train.Trainer` subclass
that trains the student as a run directory like any other.

- :mod:`.progressive` — :class:`ProgressiveDistillation`: two teacher DDIM steps → one student step, per round;
- :mod:`.consistency` — :class:`ConsistencyDistillation`: the CD loss with the run's EMA as target network;
- :mod:`.settings` — :class:`DistillConfig` (``STUDENT/distill.json``) and the student's run config;
- :mod:`.distiller` — :class:`Distiller` and :func:`distill` (``ddpm distill``).
"""

from .consistency import ConsistencyDistillation
from .distiller import Distiller, distill
from .progressive import ProgressiveDistillation, ddim_step, student_grid, teacher_points
from .settings import DistillConfig, DistillError, student_config

__all__ = [
    "ConsistencyDistillation",
    "DistillConfig",
    "DistillError",
    "Distiller",
    "ProgressiveDistillation",
    "ddim_step",
    "distill",
    "student_config",
    "student_grid",
    "teacher_points",
]
