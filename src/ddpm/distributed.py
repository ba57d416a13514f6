"""Process-group helpers for data-parallel training (``torchrun --nproc_per_node N -m ddpm train …``).

:func:`init_from_env` reads the variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``) and joins the process group — NCCL on CUDA, gloo on the CPU — or, without them,
returns a single-process :class:`DistInfo` and touches nothing, so the one-process path is unchanged. Every other
helper is a no-op (or the identity) in a single process, so callers need no ``if distributed`` branches.

How the trainer uses them (see :class:`ddpm.train.Trainer`): ``train.batch_size`` is the global batch
``B = ranks × grad_accum × micro_batch``; every rank draws the randomness of the whole global batch from the same
seeded generator and keeps its own slice, and the data are sharded so that rank ``r`` holds global positions
``r, r + W, r + 2W, …`` — so W processes compute exactly the gradient one process computes for the same batch.
Only rank 0 writes logs, samples and checkpoints; the others wait at a barrier while it checkpoints. The run
directory must be one every rank sees (a shared filesystem across nodes): all ranks read the checkpoint on resume.

    torchrun --nproc_per_node 2 -m ddpm train --preset ddpm-cifar10 --out runs/c10        # one machine, 2 GPUs
    torchrun --nnodes 2 --node_rank R --master_addr HOST --nproc_per_node 8 -m ddpm train …  # two machines
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "DistInfo",
    "init_from_env",
    "destroy",
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "barrier",
    "all_reduce_sum",
    "broadcast_float",
    "any_flag",
    "all_gather_objects",
    "check_replicas",
    "rank_slice",
    "ReplicaMismatchError",
]


class ReplicaMismatchError(RuntimeError):
    """Ranks that should hold identical tensors (parameters, EMA weights) do not."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node, and the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value is not None else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_from_env(device_type: str = "cpu", timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group torchrun describes, or return a single-process :class:`DistInfo`.

    ``device_type`` picks the backend (``"cuda"`` → NCCL, anything else → gloo). An already initialised group
    (e.g. set up by a test or a launcher) is used as it is. With CUDA the process binds to ``cuda:LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        info = DistInfo(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0), dist.get_backend())
    else:
        world = _env_int("WORLD_SIZE", 1)
        if world <= 1:
            return DistInfo()
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
        backend = "nccl" if device_type == "cuda" else "gloo"
        local = _env_int("LOCAL_RANK", 0)
        # device_id binds NCCL to this rank's GPU; it is passed only with CUDA (older torch lacks the argument).
        extra: dict[str, Any] = {}
        if device_type == "cuda":
            torch.cuda.set_device(local)
            extra["device_id"] = torch.device("cuda", local)
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            timeout=datetime.timedelta(minutes=timeout_minutes),
            **extra,
        )
        atexit.register(destroy)  # leave the group cleanly when the process ends (NCCL warns otherwise)
        info = DistInfo(dist.get_rank(), dist.get_world_size(), local, backend)
    if device_type == "cuda" and info.enabled:
        torch.cuda.set_device(info.local_rank)
    return info


def destroy() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _collective_device(device: torch.device | None) -> torch.device:
    if device is not None:
        return device
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: Sequence[float] | Tensor, device: torch.device | None = None) -> Tensor:
    """Element-wise sum over ranks of a small float64 vector (returned on ``device``)."""
    t = torch.as_tensor(values, dtype=torch.float64, device=_collective_device(device)).clone()
    if is_distributed():
        dist.all_reduce(t)
    return t


def broadcast_float(value: float | None, src: int = 0, device: torch.device | None = None) -> float | None:
    """Rank ``src``'s value on every rank (``None`` travels as NaN and comes back as ``None``)."""
    if not is_distributed():
        return value
    t = torch.tensor([float("nan") if value is None else value], dtype=torch.float64)
    t = t.to(_collective_device(device))
    dist.broadcast(t, src)
    out = float(t.item())
    return None if out != out else out


def any_flag(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank if ``flag`` is True on any rank (e.g. a signal or a deadline seen by one)."""
    if not is_distributed():
        return flag
    return bool(all_reduce_sum([1.0 if flag else 0.0], device)[0] > 0)


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, …]`` on every rank (picklable objects, e.g. RNG states)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def check_replicas(tensors: Iterable[Tensor], what: str = "parameters") -> None:
    """Raise :class:`ReplicaMismatchError` unless every rank holds bitwise the same ``tensors``.

    Compares a float64 fingerprint per tensor (sum and sum of |x|·(1 + index-weight)); DDP keeps replicas
    identical by construction (same initial weights broadcast, same averaged gradients, same optimizer
    arithmetic), so any difference is a bug worth stopping for — EMA weights in particular, which only rank 0
    saves.
    """
    if not is_distributed():
        return
    tensors = list(tensors)
    if not tensors:
        return
    device = _collective_device(tensors[0].device if tensors[0].is_cuda else None)
    rows = []
    for x in tensors:
        flat = x.detach().reshape(-1).to(torch.float64)
        ramp = torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64, device=flat.device)
        rows.append(torch.stack([flat.sum(), (flat.abs() * ramp).sum()]))
    mine = torch.stack(rows).to(device)
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    for r, theirs in enumerate(gathered):
        if not torch.equal(theirs, gathered[0]):
            bad = int((theirs != gathered[0]).any(dim=1).nonzero()[0, 0])
            raise ReplicaMismatchError(
                f"{what} differ between rank 0 and rank {r} (first at tensor #{bad}); "
                "replicas must stay identical in data-parallel training"
            )


def rank_slice(n: int, rank_: int, world: int) -> slice:
    """Rank ``rank_``'s share of a global batch of ``n``: positions ``rank_, rank_ + world, …`` (as the data)."""
    if n % world:
        raise ValueError(f"a global batch of {n} does not split over {world} ranks")
    return slice(rank_, n, world)
