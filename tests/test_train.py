"""Trainer: EMA arithmetic, accumulation = one large batch, exact resume, early stopping, checkpoints."""

import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from ddpm.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from ddpm.config import apply_overrides, get_preset
from ddpm.train import EMA, Trainer
from ddpm.train.progress import TrainProgress


def tiny(*overrides):
    # One fixed thread: exact-resume checks compare losses bit for bit, and the thread count can change the order
    # of float reductions (train.threads=auto may switch counts mid-run).
    return apply_overrides(
        get_preset("tiny"), ["data.limit=400", "train.log_every=1", "train.threads=1", *overrides]
    )


def test_ema_arithmetic():
    m = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = EMA(m, decay=0.99, warmup=True)
    with torch.no_grad():
        m.weight.fill_(3.0)
    ema.update(m)  # d_0 = min(0.99, 1/10) = 0.1
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 0.1 * 1 + 0.9 * 3))
    with torch.no_grad():
        m.weight.fill_(5.0)
    ema.update(m)  # d_1 = 2/11
    expected = 2 / 11 * (0.1 + 2.7) + 9 / 11 * 5
    assert torch.allclose(ema.model.weight, torch.full((1, 2), expected))
    plain = EMA(nn.Linear(2, 1, bias=False), decay=0.9, warmup=False)
    with torch.no_grad():
        plain.model.weight.fill_(0.0)
        m.weight.fill_(1.0)
    plain.update(m)
    assert torch.allclose(plain.model.weight, torch.full((1, 2), 0.1))


def test_accumulation_equals_one_large_batch(tmp_path):
    cfg = tiny(
        "train.max_steps=2", "train.batch_size=8", "train.grad_clip=none", "train.checkpoint_every=none"
    )
    a = Trainer(cfg, tmp_path / "a", progress=False)
    b = Trainer(apply_overrides(cfg, ["train.grad_accum=4"]), tmp_path / "b", progress=False)
    assert b.micro_batch == 2
    for _ in range(2):
        la, lb = a.train_step(), b.train_step()
        assert la["loss"] == pytest.approx(lb["loss"], rel=1e-5)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)


def _losses(run):
    return {
        r["step"]: r["loss"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    }


def test_resume_reproduces_the_uninterrupted_trajectory(tmp_path):
    cfg = tiny("train.max_steps=16", "train.checkpoint_every=8", "model.dropout=0.1", "train.val_every=4")
    full = Trainer(cfg, tmp_path / "full", progress=False).fit()
    assert full["step"] == 16
    first = Trainer(apply_overrides(cfg, ["train.max_steps=8"]), tmp_path / "cut", progress=False).fit()
    assert first["step"] == 8
    resumed = Trainer(cfg, tmp_path / "cut", resume=True, progress=False)
    assert resumed.step == 8
    resumed.fit()
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "cut")
    assert sorted(a) == sorted(b) == list(range(1, 17))
    assert all(a[k] == b[k] for k in a), [(k, a[k], b[k]) for k in a if a[k] != b[k]]
    wa = load_checkpoint(tmp_path / "full").ema
    wb = load_checkpoint(tmp_path / "cut").ema
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_checkpoints_are_complete_and_pruned(tmp_path):
    cfg = tiny("train.max_steps=12", "train.checkpoint_every=3", "train.keep_checkpoints=2")
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    ckpts = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts] == ["step-0000009", "step-0000012"]
    for p in ckpts:
        assert {f.name for f in p.iterdir()} == {
            "model.safetensors",
            "ema.safetensors",
            "state.pt",
            "config.json",
            "meta.json",
        }
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]
    ck = load_checkpoint(tmp_path / "run")
    assert ck.step == 12 and ck.state["step"] == 12 and ck.config.preset == "tiny"
    for name in ("config.json", "metrics.jsonl", "loss_curve.png", "loss_stats.md"):
        assert (tmp_path / "run" / name).is_file()


def test_fresh_run_refuses_to_overwrite(tmp_path):
    cfg = tiny("train.max_steps=2", "train.checkpoint_every=2")
    Trainer(cfg, tmp_path / "run", progress=False).fit()
    with pytest.raises(ValueError, match="--resume"):
        Trainer(cfg, tmp_path / "run", progress=False)


def test_early_stopping_restores_best_weights(tmp_path):
    # A learning rate this high makes the validation loss worse after the first validation.
    cfg = tiny(
        "train.max_steps=40",
        "train.val_every=2",
        "train.early_stopping_patience=2",
        "train.lr=0.5",
        "train.grad_clip=none",
        "train.checkpoint_every=none",
    )
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    summary = tr.fit()
    assert summary["stop_reason"] == "early_stopping"
    assert tr.validation_loss() == pytest.approx(summary["best_val"], rel=1e-5)


def test_nonfinite_steps_are_skipped_then_stop(tmp_path):
    cfg = tiny("train.max_steps=10", "train.max_nonfinite=2", "train.checkpoint_every=none")
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    with torch.no_grad():
        next(tr.model.parameters()).fill_(float("nan"))
    with pytest.raises(RuntimeError, match="non-finite"):
        tr.fit()
    assert tr.step == 0 and tr.nonfinite_total == 3
    assert list_checkpoints(tmp_path / "run" / "checkpoints")  # the last good state is saved


def test_class_conditional_training_and_label_dropout(tmp_path):
    cfg = tiny(
        "model.num_classes=10", "train.max_steps=3", "train.label_dropout=1.0", "train.checkpoint_every=none"
    )
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    seen = []
    forward = tr.model.forward
    tr.model.forward = lambda x, t, y=None: (seen.append(y.clone()), forward(x, t, y))[1]
    tr.train_step()
    assert torch.all(seen[0] == 10)  # every label replaced by the null label
    assert replace(cfg.train, label_dropout=0.0).label_dropout == 0.0


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_lr_schedule_decays_over_the_step_budget(tmp_path, schedule):
    cfg = tiny("train.max_steps=12", "train.warmup_steps=2", f"train.lr_schedule={schedule}", "train.lr=1e-3")
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    lrs = [1e-3 * tr._lr_factor(k) for k in range(13)]
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3)  # linear warm-up
    p = 5 / 10  # step 7: 5 of the 10 post-warm-up steps done
    expected = 0.5 * (1 + math.cos(math.pi * p)) if schedule == "cosine" else 1 - p
    assert lrs[7] == pytest.approx(1e-3 * expected)
    assert lrs[12] == pytest.approx(0.0) and all(a >= b for a, b in zip(lrs[1:-1], lrs[2:], strict=True))


def test_lr_schedule_follows_a_time_budget(tmp_path):
    cfg = tiny("train.max_steps=none", "train.max_minutes=10", "train.lr_schedule=linear", "train.lr=1e-3")
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    assert tr._lr_factor(5) == 1.0
    tr._time_progress = 0.25  # a quarter of the wall-clock budget used: the step count does not matter
    assert tr._lr_factor(5) == pytest.approx(0.75) == tr._lr_factor(500)
    tr._time_progress = 1.5
    assert tr._lr_factor(5) == 0.0


def _weights(tr):
    return {**{f"model.{k}": v for k, v in tr.model.state_dict().items()}, **tr.ema.state_dict()}


def test_early_stopping_after_resume_restores_the_same_best_weights(tmp_path):
    # lr 0.5: the validation loss is best at step 6 and worse at 8 and 10, so patience 2 stops at step 10. A run
    # cut at step 8 (after its best validation) and resumed must restore the step-6 weights just the same.
    cfg = tiny(
        "train.max_steps=40",
        "train.val_every=2",
        "train.early_stopping_patience=2",
        "train.lr=0.5",
        "train.grad_clip=none",
        "train.checkpoint_every=none",
    )
    full = Trainer(cfg, tmp_path / "full", progress=False)
    summary = full.fit()
    assert (summary["stop_reason"], summary["step"], summary["best_step"]) == ("early_stopping", 10, 6)
    Trainer(apply_overrides(cfg, ["train.max_steps=8"]), tmp_path / "cut", progress=False).fit()
    resumed = Trainer(cfg, tmp_path / "cut", resume=True, progress=False)
    again = resumed.fit()
    assert (again["stop_reason"], again["step"], again["best_step"]) == ("early_stopping", 10, 6)
    assert again["best_val"] == summary["best_val"]
    want, got = _weights(full), _weights(resumed)
    assert sorted(want) == sorted(got)
    assert all(torch.equal(want[k], got[k]) for k in want), [
        k for k in want if not torch.equal(want[k], got[k])
    ]
    # the final checkpoints hold those weights too; beside them only the best weights the newest one names
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)
    names = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert names == ["best-0000006", "step-0000008", "step-0000010"]
    best = load_checkpoint(tmp_path / "cut" / "checkpoints" / "best-0000006")
    assert best.step == 6 and all(torch.equal(best.ema[k], b.ema[k]) for k in b.ema)


def _records(run, key):
    return {
        r["step"]: r[key]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if key in r
    }


def test_logged_lr_is_the_one_the_step_used(tmp_path):
    # Warm-up over 4 steps at lr 1e-3: the k-th optimizer step (k = 1, 2, …) runs at lr · k / 4, then at 1e-3.
    cfg = tiny("train.max_steps=6", "train.warmup_steps=4", "train.lr=1e-3", "train.lr_schedule=constant")
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    used = []  # the lr optimizer.step() ran with, step by step
    tr.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    tr.fit()
    lrs = _records(tmp_path / "run", "lr")
    assert sorted(lrs) == list(range(1, 7))
    want = {k: 1e-3 * min(k, 4) / 4 for k in range(1, 7)}
    assert all(lrs[k] == pytest.approx(want[k], rel=1e-12) for k in lrs), (lrs, want)
    assert [lrs[k] for k in range(1, 7)] == used


class _Clock:
    """A wall clock that moves only when a training step runs (``seconds`` per step)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _timed(tr, clock, seconds, stop_at=None):
    step = tr.train_step

    def timed():
        out = step()
        clock.now += seconds
        if tr.step == stop_at:
            tr._stop_reason = "SIGINT"  # cut here, as Ctrl-C would: a checkpoint, then the loop ends
        return out

    tr.train_step, tr.clock = timed, clock
    return tr


def test_time_budget_and_its_lr_decay_continue_across_a_resume(tmp_path):
    # A 1-minute budget at 6 s per step is 10 steps, with the lr decaying linearly over the budget: step s runs at
    # lr · (1 − 6 (s − 2) / 60), as the scheduler sets a step's lr after the step before it, from the time used
    # before that one. The run cut at step 4 and resumed must follow the same curve and stop at step 10 too.
    cfg = tiny("train.max_steps=none", "train.max_minutes=1", "train.lr_schedule=linear", "train.lr=1e-3")
    _timed(Trainer(cfg, tmp_path / "full", progress=False), _Clock(0.0), 6.0).fit()
    first = _timed(Trainer(cfg, tmp_path / "cut", progress=False), _Clock(50.0), 6.0, stop_at=4).fit()
    assert (first["step"], first["stop_reason"]) == (4, "SIGINT")
    assert load_checkpoint(tmp_path / "cut").state["elapsed_s"] == 24.0
    resumed = _timed(Trainer(cfg, tmp_path / "cut", resume=True, progress=False), _Clock(1000.0), 6.0)
    summary = resumed.fit()
    assert (summary["step"], summary["stop_reason"]) == (10, "max_minutes")
    want = {s: 1e-3 * (1 - 6 * max(s - 2, 0) / 60) for s in range(1, 11)}
    for run in ("full", "cut"):
        lrs, times = _records(tmp_path / run, "lr"), _records(tmp_path / run, "time_s")
        assert sorted(lrs) == list(range(1, 11)), run
        assert all(lrs[s] == pytest.approx(want[s], rel=1e-12) for s in lrs), (run, lrs)
        assert times == {s: 6.0 * s for s in range(1, 11)}, (run, times)
    assert _losses(tmp_path / "full") == _losses(tmp_path / "cut")
    assert load_checkpoint(tmp_path / "cut").state["elapsed_s"] == 60.0


def test_progress_counters_are_saved_and_restored_as_one(tmp_path):
    cfg = tiny("train.max_steps=4", "train.val_every=2", "train.checkpoint_every=none")
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    tr.fit()
    saved = TrainProgress.from_state(load_checkpoint(tmp_path / "run").state)
    now = tr.run_progress
    assert replace(saved, elapsed_s=0.0) == replace(now, elapsed_s=0.0)
    assert 0 < saved.elapsed_s <= now.elapsed_s  # fit() still ran after its last checkpoint
    assert (now.step, now.ema_updates, now.nonfinite_total) == (4, 4, 0) and now.best_step in (2, 4)
    assert math.isfinite(now.best_val) and now.bad_validations == (now.best_step == 2)
    back = Trainer(cfg, tmp_path / "run", resume=True, progress=False)
    assert back.run_progress == saved and back.ema.num_updates == 4 and back.step == 4
    back.close()


def test_checkpoints_with_the_older_state_layout_still_resume(tmp_path):
    # Before TrainProgress, state.pt held these counters (and no elapsed time or run of non-finite steps).
    cfg = tiny("train.max_steps=4", "train.val_every=2", "train.checkpoint_every=none")
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    tr.fit()
    ck = list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    st = torch.load(ck / "state.pt", weights_only=True)
    old = {"step", "ema_updates", "best_val", "best_step", "bad_validations", "nonfinite_total"}
    for key in set(TrainProgress().state_dict()) - old:
        del st[key]
    torch.save(st, ck / "state.pt")
    back = Trainer(cfg, tmp_path / "run", resume=True, progress=False)
    want = {**st, "elapsed_s": 0.0, "nonfinite_in_a_row": 0, "best_fid": math.inf, "best_fid_step": -1}
    want = {k: want[k] for k in TrainProgress().state_dict()}
    assert back.run_progress.state_dict() == want
    back.close()
    assert TrainProgress.from_state({"step": 7}).ema_updates == 7  # the oldest: one EMA update per step
    assert TrainProgress.from_state({}, step=3) == TrainProgress(step=3, ema_updates=3)
    with pytest.raises(CheckpointError, match="'elapsed_s' should be a number"):
        TrainProgress.from_state({"step": 1, "elapsed_s": "1 min"})
    with pytest.raises(CheckpointError, match="'nonfinite_in_a_row' should be an integer"):
        TrainProgress.from_state({"nonfinite_in_a_row": 1.5})
