"""How many intra-op threads torch uses on the CPU: a fixed number, or ``"auto"`` — chosen by measurement.

On a CPU shared with other busy processes, OpenMP threads that wait for each other at every parallel region can
make 2 threads several times slower than 1, while on an idle machine more threads are faster: no fixed number is
right everywhere. :class:`ThreadTuner` times the work actually being done, one *unit* at a time (a training step,
a network evaluation while sampling, an Inception batch), at each candidate thread count; keeps the fastest; and
measures again when the time per unit drifts, and on a schedule that starts after seconds (one noisy measurement
must not decide a short run) and backs off to every few minutes. Each choice is reported as a :class:`Choice`.

>>> tuner = ThreadTuner()                                # candidates 1, 2, 4, … up to torch.get_num_threads()
>>> loss = tuner.run(lambda: trainer.train_step())      # doctest: +SKIP

The thread count can change the order of floating-point reductions, so bit-exact reproducibility on the CPU
(exact resume, identical samples) needs a fixed number.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import torch

__all__ = [
    "Choice",
    "DRIFT",
    "FIRST_RECHECK_S",
    "RECHECK_S",
    "ThreadTuner",
    "Threads",
    "candidate_counts",
    "thread_scope",
    "validate_threads",
]

Threads = int | Literal["auto"] | None  # a fixed count, "auto" (measured), or None (leave torch's setting)
T = TypeVar("T")

FIRST_RECHECK_S = 15.0  # seconds to the first routine re-measurement; the interval then doubles …
RECHECK_S = 180.0  # … up to this (a busy process may have come or gone)
DRIFT = 1.3  # re-measure when the rolling median time per unit exceeds DRIFT × the chosen count's time …
WINDOW = 5  # … over the last WINDOW units
TRIALS = 3  # timed units per leading candidate (their median decides)
LEADER_RATIO = 1.25  # after one timed unit each, candidates within this factor of the best get TRIALS units
PRUNE = 1.5  # a scan drops a count whose warm-up unit alone took this many times the best timed unit
OVERHEAD = 0.1  # re-measure only while measuring has taken at most this share of the time so far


def validate_threads(value: object, name: str = "threads") -> None:
    """Raise ``ValueError`` (one line naming ``name``) unless ``value`` is None, ``"auto"`` or an int ≥ 1."""
    if value is None or value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be auto or at least 1, got {value!r}")


def candidate_counts(max_threads: int) -> list[int]:
    """The thread counts worth trying up to ``max_threads``: 1, 2, 4, 8, … and ``max_threads`` itself."""
    counts, n = [], 1
    while n < max_threads:
        counts.append(n)
        n *= 2
    return [*counts, max(1, max_threads)]


def default_max_threads() -> int:
    """The most threads ``auto`` tries: torch's current count (which honours ``OMP_NUM_THREADS`` and any
    ``torch.set_num_threads``), at most the CPUs this process may run on."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cpus))


@dataclass(frozen=True)
class Choice:
    """One decision: run at ``threads`` because of ``reason`` (``initial``, ``drift``, ``periodic`` or
    ``single``, when there is only one candidate); ``step_s`` holds the measured median seconds per unit of work
    of each candidate tried (for a count dropped after its warm-up unit, that unit's time; empty for ``single``)."""

    threads: int
    reason: str
    step_s: dict[int, float] = field(default_factory=dict)


class ThreadTuner:
    """Pick torch's intra-op thread count by timing units of work at each candidate count.

    Tuning runs in two rounds. *Scan*: one timed unit at every candidate. *Refine*: the candidates within
    ``leader_ratio`` of the best get ``trials`` timed units in all, and the lowest median wins. The first unit after
    each change of thread count (and the very first unit) is run but not timed: a new count pays for waking its
    threads and for allocations. A scan's warm-up unit that already took ``prune`` × the best timed unit ends that
    count's scan without a timed unit (on a busy machine the slow counts cost one unit each, not two). Once chosen,
    the count is re-measured when the median of the last ``window`` units exceeds ``drift`` × its tuned time per
    unit, and on a schedule: ``first_recheck_s`` after a choice made at start-up or on drift, the interval
    doubling after each routine re-measurement up to ``recheck_s``. Re-measuring starts only while the units run
    during measurements have taken at most ``overhead`` of the time since the first unit, so that a load that
    comes and goes, or units of minutes each, cannot keep the tuner measuring slow counts.

    Args:
        candidates: thread counts to try (default: :func:`candidate_counts` of :func:`default_max_threads`).
        on_choice: called with each :class:`Choice` as it is made (e.g. to log it).
        clock, set_threads, get_threads: injectable for tests (default: ``time.perf_counter``,
            ``torch.set_num_threads``, ``torch.get_num_threads``).
    """

    def __init__(
        self,
        candidates: Sequence[int] | None = None,
        *,
        trials: int = TRIALS,
        leader_ratio: float = LEADER_RATIO,
        prune: float = PRUNE,
        drift: float = DRIFT,
        window: int = WINDOW,
        first_recheck_s: float = FIRST_RECHECK_S,
        recheck_s: float = RECHECK_S,
        overhead: float = OVERHEAD,
        on_choice: Callable[[Choice], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        set_threads: Callable[[int], None] = torch.set_num_threads,
        get_threads: Callable[[], int] = torch.get_num_threads,
    ) -> None:
        counts = sorted(
            set(candidates if candidates is not None else candidate_counts(default_max_threads()))
        )
        if not counts or counts[0] < 1:
            raise ValueError(f"thread candidates must be positive integers, got {list(candidates or [])}")
        self.candidates = counts
        self.trials, self.leader_ratio, self.prune, self.drift = max(1, trials), leader_ratio, prune, drift
        self.window, self.recheck_s, self.overhead = max(1, window), recheck_s, overhead
        self.first_recheck_s = min(first_recheck_s, recheck_s)
        self._interval = (
            self.first_recheck_s
        )  # seconds from the last choice to the next routine re-measurement
        self.on_choice = on_choice
        self._clock, self._set, self._get = clock, set_threads, get_threads
        self.choices: list[Choice] = []
        self.measuring_s = 0.0  # seconds spent in units run while measuring (warm-ups included)
        self._first_at: float | None = None  # clock at the start of the first unit
        self.chosen: int | None = None  # the count in use once tuned
        self._baseline = 0.0  # the chosen count's tuned seconds per unit
        self._tuned_at = 0.0
        self._recent: deque[float] = deque(maxlen=self.window)
        self._last: int | None = None  # the count the previous unit ran at
        self._reason = "initial"
        self._phase = "scan"  # scan → refine → run
        self._plan: list[tuple[int, int]] = []  # (count, timed units it needs in all), next first
        self._samples: dict[int, list[float]] = {}
        self._leaders: list[int] = []
        if len(counts) == 1:
            self._phase = "run"
        else:
            current = get_threads()
            self._start("initial", first=current if current in counts else counts[-1])

    @property
    def tuning(self) -> bool:
        """Whether the tuner is still measuring (scan or refine)."""
        return self._phase != "run"

    @property
    def threads(self) -> int:
        """The count the next unit runs at."""
        if self._phase == "run":
            return self.chosen if self.chosen is not None else self.candidates[0]
        return self._plan[0][0]

    def run(self, fn: Callable[[], T], work: float = 1.0) -> T:
        """Call ``fn()`` at the tuner's thread count and time it; ``work`` scales the unit (e.g. the images in a
        batch), so that units of different sizes compare as seconds per ``work``."""
        n = self.threads
        switched = self._last != n or self._get() != n
        if self._get() != n:
            self._set(n)
        if self._phase == "run" and self.chosen is None:  # a single candidate: nothing to measure
            self.chosen = n
            self._emit(Choice(n, "single"))
        t0 = self._clock()
        if self._first_at is None:
            self._first_at = t0
        out = fn()
        seconds = self._clock() - t0
        if self.tuning:
            self.measuring_s += seconds
        dt = seconds / max(work, 1e-12)
        self._last = n
        self._observe(n, dt, switched)
        return out

    # ------------------------------------------------------------------ internals
    def _start(self, reason: str, first: int) -> None:
        """Begin a scan, with ``first`` (the count in use, so no switch is needed) measured first."""
        self._reason, self._phase, self._samples = reason, "scan", {}
        self._plan = [(first, 1)] + [(c, 1) for c in self.candidates if c != first]

    def _observe(self, n: int, dt: float, switched: bool) -> None:
        if self._phase == "run":
            if len(self.candidates) == 1:
                return
            if not switched:
                self._recent.append(dt)
            now = self._clock()
            due = now - self._tuned_at >= self._interval
            drifted = (
                len(self._recent) == self.window
                and statistics.median(self._recent) > self.drift * self._baseline
            )
            start = self._first_at if self._first_at is not None else now  # set by run() before any unit
            if (due or drifted) and self.measuring_s <= self.overhead * (now - start):
                self._start("periodic" if due else "drift", first=n)
            return
        if switched:  # the first unit at a new count: warm-up, not timed …
            timed = [s[0] for s in self._samples.values()]
            if not (self._phase == "scan" and timed and dt > self.prune * min(timed)):
                return
            self._samples[n] = [dt]  # … unless it alone shows the count is slow: its time is an upper bound
            self._plan.pop(0)
        else:
            self._samples.setdefault(n, []).append(dt)
            count, needed = self._plan[0]
            if len(self._samples[count]) >= needed:
                self._plan.pop(0)
        if self._plan:
            return
        if self._phase == "scan":
            best = min(s[0] for s in self._samples.values())
            self._leaders = [c for c in self.candidates if self._samples[c][0] <= self.leader_ratio * best]
            self._phase = "refine"
            order = sorted(self._leaders, key=lambda c: c != n)  # the count in use first: no switch
            self._plan = [(c, self.trials) for c in order if len(self._samples[c]) < self.trials]
            if self._plan:
                return
        self._finish()

    def _finish(self) -> None:
        medians = {c: statistics.median(s) for c, s in sorted(self._samples.items())}
        self.chosen = min(self._leaders, key=lambda c: (medians[c], c))  # a tie goes to fewer threads
        self._baseline, self._tuned_at, self._phase = medians[self.chosen], self._clock(), "run"
        periodic = self._reason == "periodic"
        self._interval = min(2 * self._interval, self.recheck_s) if periodic else self.first_recheck_s
        self._recent.clear()
        self._emit(Choice(self.chosen, self._reason, medians))

    def _emit(self, choice: Choice) -> None:
        self.choices.append(choice)
        if self.on_choice is not None:
            self.on_choice(choice)


@contextlib.contextmanager
def thread_scope(
    threads: Threads, device: torch.device | str = "cpu", tuner: ThreadTuner | None = None
) -> Iterator[ThreadTuner | None]:
    """For the block: a fixed count is set, ``"auto"`` yields a :class:`ThreadTuner` (``tuner`` if given, else a
    new one; None off the CPU, where torch's CPU threads barely matter), None leaves torch's setting. Torch's
    thread count is restored afterwards."""
    validate_threads(threads)
    before = torch.get_num_threads()
    try:
        if isinstance(threads, int):
            torch.set_num_threads(threads)
            yield None
        elif threads == "auto" and torch.device(device).type == "cpu":
            yield tuner if tuner is not None else ThreadTuner()
        else:
            yield None
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
