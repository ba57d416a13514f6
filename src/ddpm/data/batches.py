"""Seeded train/validation splits and the resumable, shardable :class:`Batches` iterator."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

from .container import DataError, ImageData, to_float

__all__ = ["Batches", "train_val_split"]


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (e.g. (seed, epoch)) with no simple collisions."""
    digest = hashlib.blake2b(":".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def train_val_split(data: ImageData, val_fraction: float, seed: int) -> tuple[ImageData, ImageData]:
    """Seeded random split into (train, val); ``round(N · val_fraction)`` examples go to val.

    Both parts keep the original order of their examples. MNIST's 60k with 0.2 → 48k / 12k.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(data)
    n_val = int(round(n * val_fraction))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_mix_seed(seed, n)))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return data.subset(train_idx), data.subset(val_idx)


class Batches:
    """Infinite, seeded, resumable, shardable batch iterator over an :class:`ImageData`.

    Epoch e uses the permutation drawn from ``torch.Generator`` seeded by (seed, e), and (with ``flip``) one
    horizontal-flip coin per permuted position from the same generator, so the order and the flips depend only
    on (seed, epoch, position), not on how the iteration was interrupted. With ``world_size > 1`` rank r takes
    positions ``r, r + W, r + 2W, …`` of the permutation truncated to a multiple of W (as
    ``DistributedSampler(drop_last=True)``): the ranks' examples are disjoint and they all see the same
    number of batches.

    Yields ``(x, y)``: float ``[B, C, H, W]`` in [-1, 1] and int64 labels ``[B]`` on the data's device.
    ``state_dict()`` is ``{"epoch", "position"}`` (position = examples of this rank's epoch already yielded).
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        seed: int = 0,
        *,
        shuffle: bool = True,
        flip: bool = False,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.shuffle, self.flip, self.drop_last = shuffle, flip, drop_last
        self.rank, self.world_size, self.dtype = rank, world_size, dtype
        self.per_rank = len(data) // world_size
        if self.per_rank < (batch_size if drop_last else 1):
            raise DataError(
                f"{data.name}: {len(data)} examples are too few for batch_size={batch_size} "
                f"x world_size={world_size} with drop_last={drop_last}"
            )
        self.epoch, self.position = 0, 0
        self._order: tuple[int, torch.Tensor, torch.Tensor | None] | None = None

    def __len__(self) -> int:
        """Batches per epoch (per rank)."""
        if self.drop_last:
            return self.per_rank // self.batch_size
        return -(-self.per_rank // self.batch_size)

    def epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's example indices ``[per_rank]`` in ``epoch``, and its flip mask (bool, or None)."""
        if self._order is None or self._order[0] != epoch:
            n = len(self.data)
            g = torch.Generator().manual_seed(_mix_seed(self.seed, epoch))
            perm = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
            flips = torch.rand(n, generator=g) < 0.5 if self.flip else None
            stop = self.per_rank * self.world_size
            idx = perm[:stop][self.rank :: self.world_size]
            fl = flips[:stop][self.rank :: self.world_size] if flips is not None else None
            self._order = (epoch, idx, fl)
        return self._order[1], self._order[2]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        limit = self.per_rank - self.batch_size if self.drop_last else self.per_rank - 1
        if self.position > limit:
            self.epoch, self.position = self.epoch + 1, 0
        idx, flips = self.epoch_order(self.epoch)
        sl = slice(self.position, self.position + self.batch_size)
        take = idx[sl].to(self.data.images.device)
        x = to_float(self.data.images[take], self.dtype)
        if flips is not None:
            f = flips[sl].to(x.device).view(-1, 1, 1, 1)
            x = torch.where(f, x.flip(-1), x)
        y = self.data.labels[take.to(self.data.labels.device)]
        self.position += int(take.shape[0])
        return x, y

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": int, "position": int}``: where the next batch starts."""
        return {"epoch": int(self.epoch), "position": int(self.position)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume exactly where :meth:`state_dict` was taken (same data, seed, batch size, sharding)."""
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
