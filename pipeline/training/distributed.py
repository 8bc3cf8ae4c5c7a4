"""The process group of a training run started by torchrun (or a single process).

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
variables; without them the run is one process and no process group is
made. Backend: ``nccl`` on CUDA, ``gloo`` on CPU (``training.backend``
can force one). Each rank uses ``cuda:LOCAL_RANK`` when CUDA is available.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from pipeline.errors import MyriadError

logger = logging.getLogger(__name__)


@dataclass
class DistributedContext:
    """Rank, world size and device of this process."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks in place (no-op on one process); returns it."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(backend: str = "auto", timeout_minutes: float = 30.0) -> DistributedContext:
    """Join the torchrun process group (if any) and pick this rank's device.

    Raises
    ------
    MyriadError
        ``nccl`` requested without CUDA.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    chosen = ("nccl" if cuda else "gloo") if backend == "auto" else backend
    if chosen == "nccl" and not cuda:
        raise MyriadError("training.backend: nccl needs CUDA devices; use gloo (or auto) on CPU")
    if world_size == 1:
        return DistributedContext(0, 1, 0, device, None)
    dist.init_process_group(backend=chosen, timeout=timedelta(minutes=timeout_minutes))
    logger.debug("rank %d/%d joined the %s process group on %s", rank, world_size, chosen, device)
    return DistributedContext(rank, world_size, local_rank, device, chosen)
