"""One code path for one process and for ``torchrun`` (DistributedDataParallel), plus resumable batches.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
with ``WORLD_SIZE > 1`` the process group is started (NCCL on CUDA, gloo on CPU). Without them
everything runs in one process and the collectives below are no-ops.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | torch.device | None = None) -> DistContext:
    """Read the ``torchrun`` environment and start the process group when there is more than one process.

    Args:
        device: ``"cpu"``, ``"cuda"`` or None (CUDA when available). With CUDA each process
            takes ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(kind, local_rank) if kind == "cuda" else torch.device(kind)
    if kind == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo", rank=rank, world_size=world)
        log.info("bitlower: process group started: rank %d of %d on %s", rank, world, dev)
    return DistContext(rank, world, local_rank, dev)


def teardown() -> None:
    """Destroy the process group ``setup`` started, if any (a gloo group left to interpreter exit can abort the
    process: "terminate called without an active exception"); ``setup`` starts a new one afterwards."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum over processes (identity in one process)."""
    if ctx.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


class ResumableBatches:
    """Deterministic, resumable, sharded index batches over a dataset of ``length`` items.

    Epoch ``e`` is a permutation drawn from a generator seeded with ``seed + e`` (no global
    RNG is read, so checkpoints need only ``(epoch, position)``). Each global batch of
    ``global_batch`` indices is split into contiguous per-rank slices; incomplete global
    batches at the end of an epoch are dropped, so every rank takes the same number of steps.

    Example:
        >>> batches = ResumableBatches(10, global_batch=4, seed=0)
        >>> len(batches.next_indices())
        4
    """

    def __init__(self, length: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} must divide by the world size {world_size}")
        if length < global_batch:
            raise ValueError(f"dataset of {length} items is smaller than one global batch of {global_batch}")
        self.length, self.global_batch, self.seed = length, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.per_epoch = length // global_batch
        self.epoch, self.position = 0, 0
        self._order = None

    def _permutation(self) -> torch.Tensor:
        if self._order is None or self._order[0] != self.epoch:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            self._order = (self.epoch, torch.randperm(self.length, generator=gen))
        return self._order[1]

    def next_indices(self) -> torch.Tensor:
        """This rank's indices of the next global batch; advances the position."""
        start = self.position * self.global_batch
        batch = self._permutation()[start:start + self.global_batch]  # (G,)
        per_rank = self.global_batch // self.world_size
        mine = batch[self.rank * per_rank:(self.rank + 1) * per_rank]  # (G/W,)
        self.position += 1
        if self.position == self.per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return mine

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "global_batch": self.global_batch, "length": self.length}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "global_batch", "length"):
            if state[key] != getattr(self, key):
                raise ValueError(f"data order: {key} is {getattr(self, key)} here, {state[key]} in the checkpoint")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def collate(dataset, indices: torch.Tensor):
    """Stack ``dataset[i]`` for the indices.

    Tensor datasets, and datasets with a ``get_batch(indices)`` method, are indexed in one call
    (item by item, an image dataset step measured 600 ms instead of 45 ms on 2 CPU cores).
    """
    tensors = getattr(dataset, "tensors", None)
    if isinstance(tensors, tuple):
        return tuple(t[indices] for t in tensors)
    get_batch = getattr(dataset, "get_batch", None)
    if callable(get_batch):
        return tuple(get_batch(indices))
    items = [dataset[int(i)] for i in indices]
    return tuple(torch.stack([torch.as_tensor(item[j]) for item in items]) for j in range(len(items[0])))
