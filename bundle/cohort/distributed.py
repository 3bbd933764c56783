"""The ranks of a cohort job: torch.distributed as set up by ``torchrun`` (or any launcher that sets its variables).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every process
(across nodes with ``--nnodes`` and a rendezvous endpoint); without them the job is one process, rank 0 of 1. The
ranks exchange only the cohort (one broadcast) and, at the end, their records of it (one gather to rank 0), so the
process group carries small CPU objects: gloo, or NCCL on GPU nodes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List, Optional

import torch
import torch.distributed as dist

__all__ = ["Ranks", "join_ranks"]
logger = logging.getLogger(__name__)


@dataclass
class Ranks:
    """This process's place in the job, and the collectives the cohort needs (no-ops for one process).

    Attributes:
        rank: this process's rank.
        world_size: the number of processes.
        local_rank: its rank on this node (its GPU).
        owns_group: whether :func:`join_ranks` created the process group (and :meth:`close` destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    def broadcast(self, obj: Any) -> Any:
        """``obj`` of rank 0, on every rank (pickled)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> Optional[List[Any]]:
        """Every rank's ``obj``, in rank order, on rank 0 (pickled); None on the other ranks."""
        if self.world_size == 1:
            return [obj]
        box: Optional[List[Any]] = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(obj, box, dst=0)
        return box

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def join_ranks(backend: Optional[str] = None, timeout_minutes: float = 24 * 60) -> Ranks:
    """Join the job's process group (created from ``torchrun``'s environment when there is none yet).

    Args:
        backend: ``"gloo"`` or ``"nccl"`` (None: NCCL when CUDA is available, else gloo); with NCCL each rank's
            current CUDA device is set to its ``LOCAL_RANK``.
        timeout_minutes: how long a rank waits for the others (at the end, while the slowest rank finishes its
            last slide); the group's collectives fail after it.

    Returns:
        The ranks; rank 0 of 1 without ``WORLD_SIZE`` > 1 in the environment.
    """
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size <= 1:
        return Ranks()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    ranks = Ranks(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)
    logger.info("rank %d of %d (local rank %d, %s)", ranks.rank, ranks.world_size, local_rank, backend)
    return ranks
