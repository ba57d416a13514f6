"""Helpers shared by the test files: thread pinning, the command line run in-process, a tiny trained run, and a
real code-execution pickle payload."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ddpm.cli import main


@contextlib.contextmanager
def pinned_threads(n: int = 1) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside, restored after. Tiny tensors on a shared 2-core machine run
    fastest on one thread: a second one only spins against the other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test, restored after it."""
    with pinned_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_module() -> Iterator[None]:
    """One intra-op thread for a whole module (``pytestmark = pytest.mark.usefixtures("one_thread_module")``)."""
    with pinned_threads(1):
        yield


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``ddpm ARGV`` in this process on one thread: (exit status, stdout, stderr of this call only)."""
    capsys.readouterr()
    with pinned_threads(1):
        code = main([*argv])
    out, err = capsys.readouterr()
    return code, out, err


class Payload:
    """Unpickling this calls ``open(marker, "w")``, creating the marker file: a real code-execution payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `tiny` run trained 2 steps through the command line (read-only: copy it before changing it)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    with pinned_threads(1):
        argv = ["train", "--preset", "tiny", "--out", str(out), "--max-steps", "2", "--no-progress"]
        assert main([*argv, "--set", "data.limit=64", "--set", "train.threads=1"]) == 0
    return out


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `tiny` run of 6 steps that logs losses, validation losses and sample grids every few steps (for the
    page of ``ddpm serve``; read-only)."""
    out = tmp_path_factory.mktemp("serve") / "tiny"
    sets = [
        "data.limit=64",
        "train.threads=1",
        "train.log_every=2",
        "train.val_every=2",
        "train.sample_every=3",
    ]
    with pinned_threads(1):
        argv = ["train", "--preset", "tiny", "--out", str(out), "--max-steps", "6", "--no-progress"]
        assert main([*argv, "--set", *sets]) == 0
    return out


@pytest.fixture(scope="session")
def serve_page(serve_run: Path) -> Iterator[tuple[object, str]]:
    """``ddpm serve`` of :func:`serve_run` on 127.0.0.1 at a free port: (its Context, its URL)."""
    pytest.importorskip("gradio", reason="ddpm serve needs gradio (pip install 'ddpm[serve]')")
    import socket

    from ddpm.serve import Context, Runs, launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = Context(Runs([serve_run], device="cpu"))
    demo = launch(ctx, "127.0.0.1", port, block=False, quiet=True)
    try:
        with pinned_threads(1):
            yield ctx, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        ctx.close()
