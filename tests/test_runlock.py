"""One trainer per run directory: the lock file, its stale takeover, and the Trainer holding it for its life.
Two real processes contending for one directory, and a SIGKILLed holder, are in ``test_reliability.py``."""

import gc
import json
import os
import socket

import pytest

from ddpm.config import ConfigError, apply_overrides, get_preset
from ddpm.runlock import LOCK_NAME, RunLock, RunLockedError
from ddpm.train import Trainer


def tiny(*overrides):
    return apply_overrides(get_preset("tiny"), ["data.limit=200", "train.threads=1", *overrides])


def test_a_second_lock_is_refused_naming_the_holder_until_the_first_is_released(tmp_path):
    run = tmp_path / "run"
    first = RunLock(run)
    first.acquire()
    record = json.loads((run / LOCK_NAME).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    with pytest.raises(
        RunLockedError, match=rf"{run} is in use by another trainer: pid {os.getpid()} on host "
    ):
        RunLock(run).acquire()
    assert isinstance(RunLockedError("x"), ConfigError)  # the command line prints it as one line
    first.acquire()  # holding it already: a no-op
    first.release()
    assert not (run / LOCK_NAME).exists()
    logs = []
    with RunLock(run, logs.append) as second:
        assert second.held
    assert logs == []  # a released lock is not stale


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_message(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # what a SIGKILLed holder leaves: its record, with nobody holding the flock any more
    (run / LOCK_NAME).write_text(
        json.dumps({"pid": 4242424, "host": "gone", "started": "2024-06-11 10:00:00"})
    )
    logs = []
    lock = RunLock(run, logs.append)
    lock.acquire()
    assert len(logs) == 1 and "stale lock of pid 4242424 on host gone" in logs[0], logs
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_lock_on_a_new_directory_does_not_leave_it_behind_when_nothing_was_written(tmp_path):
    run = tmp_path / "a" / "b"
    lock = RunLock(run)
    lock.acquire()
    assert run.is_dir()
    lock.release()
    assert not (tmp_path / "a").exists()


def test_the_trainer_holds_the_run_directory_for_its_life(tmp_path):
    run = tmp_path / "run"
    cfg = tiny("train.max_steps=2", "train.checkpoint_every=none")
    a = Trainer(cfg, run, progress=False)
    assert (run / LOCK_NAME).is_file()
    with pytest.raises(RunLockedError, match=rf"pid {os.getpid()} .*this process: close\(\) that Trainer"):
        Trainer(cfg, run, progress=False)
    a.fit()  # releases it at the end
    assert not (run / LOCK_NAME).exists()
    b = Trainer(cfg, run, resume=True, progress=False)
    del b  # garbage collection releases it too
    gc.collect()
    with Trainer(cfg, run, resume=True, progress=False) as c:
        assert (run / LOCK_NAME).is_file()
        c.close()
        c.fit()  # takes it again for the fit
        assert not (run / LOCK_NAME).exists()
    assert not (run / LOCK_NAME).exists()


def test_a_trainer_that_fails_to_start_releases_the_lock(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="nothing to resume"):
        Trainer(tiny(), run, resume=True, progress=False)
    assert not run.exists()  # --resume of a missing directory neither locks nor creates it
    with pytest.raises(ConfigError, match="not divisible"):
        Trainer(tiny("train.grad_accum=3"), run, progress=False)
    assert not run.exists()  # a fresh run that never started leaves nothing behind
    run.mkdir()
    with pytest.raises(ConfigError, match="nothing to resume"):
        Trainer(tiny(), run, resume=True, progress=False)
    assert list(run.iterdir()) == []


def test_a_lock_released_between_open_and_flock_is_not_taken_on_the_deleted_file(tmp_path, monkeypatch):
    import fcntl

    run = tmp_path / "run"
    first = RunLock(run)
    first.acquire()
    real_flock, calls = fcntl.flock, []

    def flock(fd, op):  # the holder releases (and deletes the file) right after the contender opened it
        calls.append(fd)
        if len(calls) == 1:
            first.release()
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    second = RunLock(run)
    second.acquire()
    monkeypatch.undo()
    assert len(calls) == 2  # it locked the deleted file, noticed, and locked the new one
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    with pytest.raises(RunLockedError):
        RunLock(run).acquire()  # nobody else can take it meanwhile
    second.release()
