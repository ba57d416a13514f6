"""train.threads=auto: the ThreadTuner on a fake CPU whose time per unit depends on the thread count (exact
figures), re-measuring on drift and on schedule, fixed counts bypassing it, the config, and real runs (a Trainer,
sampling and feature extraction) that tune and log their choices."""

import json
import math
import warnings

import numpy as np
import pytest
import torch

from ddpm.cli import main
from ddpm.config import ConfigError, apply_overrides, config_from_dict, config_to_dict, get_preset
from ddpm.threads import Choice, ThreadTuner, candidate_counts, thread_scope, validate_threads
from ddpm.train import Trainer, validate_config

WARMUP = 0.25  # the share more the first unit at a new thread count costs on the fake CPU (on the 2-core
# machine a demo step took 0.19 s as the first at 2 threads after 1, then 0.15 s)


class FakeCPU:
    """A clock, a thread setting and a unit of work costing ``cost[threads]`` seconds (× 1 + WARMUP on the first
    unit after a change of thread count). Costs are dyadic, so every time the tuner sees is exact."""

    def __init__(self, cost: dict[int, float], threads: int = 4) -> None:
        self.cost, self.threads, self.now = dict(cost), threads, 0.0
        self.warm = None  # the count the previous unit ran at
        self.units: dict[int, int] = {}

    def clock(self) -> float:
        return self.now

    def set(self, n: int) -> None:
        self.threads = n

    def get(self) -> int:
        return self.threads

    def work(self) -> int:
        n = self.threads
        self.now += self.cost[n] * (1 + WARMUP if self.warm != n else 1)
        self.warm = n
        self.units[n] = self.units.get(n, 0) + 1
        return n

    def tuner(self, candidates, **kw) -> ThreadTuner:
        return ThreadTuner(candidates, clock=self.clock, set_threads=self.set, get_threads=self.get, **kw)


def run_until_choice(cpu: FakeCPU, tuner: ThreadTuner, limit: int = 100) -> int:
    """Units run until the tuner makes its next choice."""
    before = len(tuner.choices)
    for i in range(1, limit + 1):
        assert tuner.run(cpu.work) == cpu.threads  # fn's result comes back
        if len(tuner.choices) > before:
            return i
    raise AssertionError(f"no choice in {limit} units")


def test_candidate_counts():
    assert candidate_counts(1) == [1]
    assert candidate_counts(2) == [1, 2]
    assert candidate_counts(6) == [1, 2, 4, 6]
    assert candidate_counts(8) == [1, 2, 4, 8]


def test_tuner_picks_the_fastest_count_and_discards_warmup_units():
    cpu = FakeCPU({1: 1.0, 2: 0.5, 4: 0.75})
    logged: list[Choice] = []
    tuner = cpu.tuner([4, 1, 2], on_choice=logged.append)
    assert tuner.tuning and tuner.threads == 4  # the count in use is measured first: no switch
    run_until_choice(cpu, tuner)
    # 1's warm-up unit alone took 1.25 s > PRUNE × 0.75 (4's timed unit): its scan ends there, with that time.
    assert logged == tuner.choices == [Choice(2, "initial", {1: 1.25, 2: 0.5, 4: 0.75})]
    assert not tuner.tuning and tuner.chosen == tuner.threads == 2
    # 4 is far behind after one timed unit: it cost its first and one timed unit, no more; 1 only its warm-up.
    assert cpu.units[4] == 2 and cpu.units[1] == 1
    for _ in range(20):
        tuner.run(cpu.work)
    assert cpu.threads == 2 and len(tuner.choices) == 1  # steady: no re-measuring


def test_a_busy_machine_picks_one_thread():
    """The issue's figures: with another busy process, 2 threads took 173/58 ≈ 3× as long per step as 1."""
    cpu = FakeCPU({1: 0.125, 2: 0.375}, threads=2)
    tuner = cpu.tuner([1, 2])
    run_until_choice(cpu, tuner)
    assert tuner.choices[-1] == Choice(1, "initial", {1: 0.125, 2: 0.375})
    assert cpu.units[2] == 2  # the slow count: one warm-up and one timed unit


def test_close_candidates_are_refined_by_their_median():
    cpu = FakeCPU({1: 0.5, 2: 0.5625}, threads=2)  # within LEADER_RATIO: both get TRIALS timed units
    tuner = cpu.tuner([1, 2], trials=3)
    run_until_choice(cpu, tuner)
    assert tuner.choices[-1] == Choice(1, "initial", {1: 0.5, 2: 0.5625})
    # 3 timed units each plus a warm-up per visit: 2 first (in use), then 1, then back to 2 (1, now in use, first)
    assert cpu.units[1] == 4 and cpu.units[2] == 5


def test_drift_triggers_a_new_measurement_and_a_switch():
    cpu = FakeCPU({1: 1.0, 2: 0.5}, threads=2)
    tuner = cpu.tuner([1, 2], window=5, drift=1.3, first_recheck_s=1e9, recheck_s=1e9)
    run_until_choice(cpu, tuner)
    assert tuner.chosen == 2
    cpu.cost[2] = 0.625  # 1.25× slower: below the drift threshold, nothing happens
    for _ in range(120):  # (and measuring is soon under 10 % of the time: re-measuring is allowed)
        tuner.run(cpu.work)
    assert len(tuner.choices) == 1
    cpu.cost[2] = 2.0  # a busy process arrived: 2 threads now 4× slower
    units = run_until_choice(cpu, tuner)
    assert tuner.choices[-1] == Choice(1, "drift", {1: 1.0, 2: 2.0})
    assert units <= 5 + 4  # noticed after a window of 5 units, measured in a few more
    assert cpu.threads == 1


def test_a_slow_count_is_dropped_after_its_warmup_unit():
    """On a busy machine (2 threads 3× slower) a scan starting at 1 thread runs 2 threads once, not twice."""
    for prune, units_at_2, seen in [(1.5, 1, 0.9375), (math.inf, 2, 0.75)]:
        cpu = FakeCPU({1: 0.25, 2: 0.75}, threads=1)
        tuner = cpu.tuner([1, 2], prune=prune)
        run_until_choice(cpu, tuner)
        assert tuner.choices[-1] == Choice(1, "initial", {1: 0.25, 2: seen})
        assert cpu.units[2] == units_at_2


def test_periodic_rechecks_back_off_and_find_a_count_that_became_faster():
    cpu = FakeCPU({1: 0.125, 2: 0.25}, threads=1)  # short units: measuring stays within its share of the time
    at: list[float] = []
    tuner = cpu.tuner([1, 2], first_recheck_s=10.0, recheck_s=40.0, on_choice=lambda c: at.append(cpu.now))
    while cpu.now < 150.0:
        tuner.run(cpu.work)
    assert [c.reason for c in tuner.choices] == ["initial"] + ["periodic"] * (len(at) - 1)
    assert all(c.threads == 1 for c in tuner.choices)
    # From one choice to the next: the interval, then a measurement of a few units (2 at 2 threads, 1 at 1).
    gaps = [b - a for a, b in zip(at, at[1:], strict=False)]
    assert len(gaps) >= 4
    for gap, interval in zip(gaps, [10.0, 20.0, 40.0, 40.0, 40.0], strict=False):
        assert interval <= gap <= interval + 2.0, gaps
    cpu.cost[2] = 0.0625  # the busy process left: 2 threads are fast again, 1 thread is as before (no drift)
    start = cpu.now
    run_until_choice(cpu, tuner, limit=1000)
    assert tuner.choices[-1] == Choice(2, "periodic", {1: 0.125, 2: 0.0625})
    assert cpu.now - start <= 40.0 + 2.0


@pytest.mark.parametrize("overhead", [0.1, math.inf])
def test_measuring_stays_within_its_share_of_the_time(overhead):
    """Units long against ``recheck_s`` (a big model: minutes per step) make a re-measurement due after every
    unit; the overhead budget keeps measuring, slow counts included, to about 10 % of the time."""
    cpu = FakeCPU({1: 1.0, 2: 4.0}, threads=1)
    tuner = cpu.tuner([1, 2], recheck_s=2.0, overhead=overhead)
    for _ in range(2000):
        tuner.run(cpu.work)
    periodic = [c for c in tuner.choices if c.reason == "periodic"]
    assert all(c.threads == 1 for c in tuner.choices)
    if overhead == 0.1:
        assert tuner.measuring_s <= 0.1 * cpu.now + 10  # at most one measurement over the budget
        assert len(periodic) >= 10  # it still looks again now and then
    else:
        assert tuner.measuring_s > 0.5 * cpu.now


def test_a_single_candidate_is_used_without_measuring():
    cpu = FakeCPU({1: 1.0}, threads=1)
    tuner = cpu.tuner([1])
    assert not tuner.tuning
    for _ in range(30):
        tuner.run(cpu.work)
    assert tuner.choices == [Choice(1, "single")]


def test_bad_candidates_and_thread_values_are_refused():
    with pytest.raises(ValueError, match="positive"):
        ThreadTuner([0, 2])
    for bad in (0, -1, "foo", 2.5, True):
        with pytest.raises(ValueError, match="threads must be auto or at least 1"):
            validate_threads(bad, "threads")
    for good in (None, "auto", 1, 3):
        validate_threads(good)


def test_fixed_counts_bypass_tuning_and_the_count_is_restored():
    n = torch.get_num_threads()
    with thread_scope(3) as tuner:
        assert tuner is None and torch.get_num_threads() == 3
    assert torch.get_num_threads() == n
    with thread_scope(None) as tuner:
        assert tuner is None and torch.get_num_threads() == n
    with thread_scope("auto", "cuda") as tuner:  # off the CPU: not tuned (building the device needs no GPU)
        assert tuner is None
    with thread_scope("auto") as tuner:
        assert isinstance(tuner, ThreadTuner)


# --------------------------------------------------------------------------- config
def test_config_accepts_auto_numbers_and_old_files():
    cfg = get_preset("tiny")
    assert cfg.train.threads == "auto"  # the default
    assert apply_overrides(cfg, ["train.threads=2"]).train.threads == 2
    assert apply_overrides(cfg, ["train.threads=auto"]).train.threads == "auto"
    assert apply_overrides(cfg, ["train.threads=none"]).train.threads is None
    d = config_to_dict(cfg)
    assert d["train"]["threads"] == "auto" and config_from_dict(d) == cfg
    for old in (None, 1, 2):  # config.json files written before "auto" existed
        d["train"]["threads"] = old
        assert config_from_dict(d).train.threads == old


@pytest.mark.parametrize("value", ["0", "-1", "foo", "2.5"])
def test_config_refuses_bad_threads_in_one_line(value, capsys, tmp_path):
    with pytest.raises(ConfigError) as e:
        validate_config(apply_overrides(get_preset("tiny"), [f"train.threads={value}"]))
    assert "train.threads" in str(e.value) and "\n" not in str(e.value)
    out = tmp_path / "never"
    argv = ["train", "--preset", "tiny", "--out", str(out), "--max-steps", "1", "--no-progress"]
    assert main([*argv, "--set", f"train.threads={value}"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.threads" in err and not out.exists()


# --------------------------------------------------------------------------- real runs
@pytest.fixture
def two_threads():
    """auto tries 1 … torch.get_num_threads(): make that 2 (tests run with OMP_NUM_THREADS=1)."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def _records(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_trainer_with_auto_tunes_and_logs_its_choice(two_threads, tmp_path, monkeypatch):
    import tqdm.auto

    postfixes: list[dict] = []

    class Bar(tqdm.auto.tqdm):  # records what the progress bar is told to show
        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            postfixes.append(kwargs)
            super().set_postfix(ordered_dict, refresh, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    cfg = apply_overrides(
        get_preset("tiny"),
        ["data.limit=64", "train.max_steps=14", "train.checkpoint_every=none", "train.val_every=2"],
    )
    assert cfg.train.threads == "auto"
    Trainer(cfg, tmp_path / "run", progress=True).fit()
    assert torch.get_num_threads() == 2  # restored after fit()
    recs = [r for r in _records(tmp_path / "run") if "threads" in r]
    assert recs, "no threads record in metrics.jsonl"
    first = recs[0]
    assert first["threads"] in (1, 2) and first["threads_reason"] == "initial"
    assert set(first["step_s"]) == {"1", "2"} and all(v > 0 for v in first["step_s"].values())
    assert 1 <= first["step"] <= 14
    # The progress bar shows the count in use after every step, validation steps included.
    assert len(postfixes) > 14 and any("val" in p for p in postfixes)
    assert all(p.get("threads") in (1, 2) for p in postfixes), postfixes


def test_a_fixed_count_pins_training(two_threads, tmp_path):
    cfg = apply_overrides(get_preset("tiny"), ["data.limit=64", "train.max_steps=3", "train.threads=1"])
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    assert torch.get_num_threads() == 1
    tr.fit()
    assert torch.get_num_threads() == 1
    assert not [r for r in _records(tmp_path / "run") if "threads" in r]


def test_sampling_tunes_per_network_evaluation(two_threads, tmp_path, monkeypatch):
    from ddpm import pipeline, threads

    cfg = apply_overrides(get_preset("tiny"), ["data.limit=64", "train.max_steps=1", "train.threads=2"])
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    torch.set_num_threads(2)
    lm = pipeline.load_model(tmp_path / "run")
    made: list[ThreadTuner] = []

    def scope(value, device="cpu", tuner=None):
        made.append(ThreadTuner([1, 2]))
        return threads.thread_scope(value, device, made[-1])

    monkeypatch.setattr(pipeline, "thread_scope", scope)
    auto = pipeline.generate(lm, 8, method="ddim", steps=10, batch_size=4, threads="auto")
    assert torch.get_num_threads() == 2
    tuner = made[-1]
    assert tuner.choices and tuner.choices[0].reason == "initial"  # 20 evaluations: enough to choose
    assert set(tuner.choices[0].step_s) == {1, 2}
    fixed = pipeline.generate(lm, 8, method="ddim", steps=10, batch_size=4, threads=1)
    assert auto.shape == fixed.shape == (8, 1, 16, 16) and auto.dtype == torch.uint8
    assert (auto.int() - fixed.int()).abs().max() <= 1  # the same samples, up to float rounding


def test_feature_extraction_tunes_per_batch(two_threads, tmp_path):
    from ddpm.metrics.fid import FEATURE_DIM, InceptionFeatures

    class Net(torch.nn.Module):  # a stand-in for the Inception file: [N, 3, 299, 299] -> [N, 2048]
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(3 * 8 * 8, FEATURE_DIM)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1))

    torch.manual_seed(0)
    path = tmp_path / "net.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.jit.script is deprecated": the extractor loads TorchScript
        torch.jit.script(Net()).save(str(path))
    imgs = torch.randint(
        0, 256, (24, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    auto = InceptionFeatures("cpu", batch_size=2, model_path=path)
    fixed = InceptionFeatures("cpu", batch_size=2, model_path=path, threads=1)
    f_auto = auto(imgs)
    assert torch.get_num_threads() == 2
    assert auto._tuner is not None and auto._tuner.choices and fixed._tuner is None
    assert set(auto._tuner.choices[0].step_s) == {1, 2}
    np.testing.assert_allclose(f_auto, fixed(imgs), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="threads must be auto or at least 1"):
        InceptionFeatures("cpu", model_path=path, threads=0)
