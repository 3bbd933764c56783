"""Each rank's share of a cohort, balanced by slide size: every slide in exactly one share, the same on every rank."""

from __future__ import annotations

from typing import List, Sequence

__all__ = ["balanced_shards"]


def balanced_shards(weights: Sequence[float], world_size: int) -> List[List[int]]:
    """Split slides among ``world_size`` ranks so that each rank's total weight is about the same.

    Longest processing time first: the slides from the heaviest to the lightest, each to the rank with the least
    weight so far (ties: the lower rank; equal weights: the earlier slide first), so the largest share exceeds the
    mean by at most the largest slide. Deterministic, so every rank computes the same shares without talking.

    Args:
        weights: one non-negative weight per slide (e.g. its pixels at the model's resolution).
        world_size: the number of ranks (>= 1).

    Returns:
        ``world_size`` lists of slide indices, each in manifest order.

    Raises:
        ValueError: ``world_size`` < 1.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    loads = [0.0] * world_size
    shards: List[List[int]] = [[] for _ in range(world_size)]
    for index in sorted(range(len(weights)), key=lambda i: (-float(weights[i]), i)):
        rank = min(range(world_size), key=lambda r: (loads[r], len(shards[r]), r))
        shards[rank].append(index)
        loads[rank] += float(weights[index])
    return [sorted(shard) for shard in shards]
