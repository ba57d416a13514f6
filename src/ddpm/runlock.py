"""One trainer per run directory: an exclusive lock on ``RUN/.lock`` for the life of a trainer.

The lock is an advisory ``flock`` on the open file, which the kernel drops when its holder exits in any way
(SIGKILL included), and the file's text names the holder (pid, host, start time) so that a second trainer can say
who is in its way. A lock file that still names a holder although nobody holds the ``flock`` was left by a killed
process: it is taken over, with a message. Releasing deletes the file (while still holding the lock; a trainer
that opened the old file meanwhile notices that it no longer is ``RUN/.lock`` and tries again).

On a file system without ``flock`` the run goes on unlocked, with a warning.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import ConfigError

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError"]

LOCK_NAME = ".lock"


class RunLockedError(ConfigError):
    """Another live trainer holds the run directory; the message is one line naming it."""


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a trainer that has not written its pid yet"
    out = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    if holder.get("started"):
        out += f", started {holder['started']}"
    return out


def _read_holder(fd: int) -> dict[str, Any] | None:
    """The holder's record in the lock file (None when empty or unreadable: e.g. a holder killed mid-write)."""
    try:
        raw = os.pread(fd, 4096, 0)
        holder = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _is_current(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` still is ``path`` (a releasing holder may have unlinked it meanwhile)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class RunLock:
    """The exclusive lock of ``run_dir`` (``run_dir/.lock``). ``acquire`` creates ``run_dir`` when needed (and
    ``release`` removes what it created again if nothing was written there) and raises :class:`RunLockedError` when another trainer
    holds it; ``log`` receives the one-line message of a stale lock's takeover."""

    def __init__(self, run_dir: str | Path, log: Callable[[str], None] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.log = log or (lambda s: None)
        self._fd: int | None = None
        self._made: list[Path] = []  # the directories acquire() created, innermost first

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (a no-op when this object holds it already)."""
        if self._fd is not None:
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not a POSIX system
            self.log(f"warning: cannot lock {self.run_dir} here (no fcntl); make sure one trainer uses it")
            return
        self._made = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        while True:
            # (again on a retry: a releasing trainer that made the directory and wrote nothing removes it)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    self.log(
                        f"warning: cannot lock {self.path} ({e.strerror}); make sure one trainer uses it"
                    )
                    return
                holder = self._holder_of_busy(fd)
                os.close(fd)
                self._forget_dir()
                raise RunLockedError(self._busy_message(holder)) from None
            if _is_current(fd, self.path):
                break
            os.close(fd)  # the file was released and deleted between our open and flock: lock the new one
        old = _read_holder(fd)
        if old is not None:
            self.log(f"{self.path}: taking over a stale lock of {_describe(old)}: that trainer is gone")
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd

    def _holder_of_busy(self, fd: int) -> dict[str, Any] | None:
        """The live holder's record; it may be between taking the lock and writing its pid, so wait a moment."""
        for _ in range(25):
            holder = _read_holder(fd)
            if holder is not None:
                return holder
            time.sleep(0.02)
        return None

    def _busy_message(self, holder: dict[str, Any] | None) -> str:
        mine = (
            holder is not None
            and holder.get("pid") == os.getpid()
            and holder.get("host") == socket.gethostname()
        )
        hint = " (this process: close() that Trainer or let its fit() end first)" if mine else ""
        return f"run directory {self.run_dir} is in use by another trainer: {_describe(holder)}{hint}"

    def release(self) -> None:
        """Drop the lock and delete the lock file (a no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _is_current(fd, self.path):
                os.unlink(self.path)  # still locked: nobody else can be holding this file
        except OSError:
            pass
        finally:
            os.close(fd)
        self._forget_dir()

    def _forget_dir(self) -> None:
        """Remove the directories :meth:`acquire` made if nothing was written to them."""
        made, self._made = self._made, []
        for p in made:
            try:
                p.rmdir()
            except OSError:
                return

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
