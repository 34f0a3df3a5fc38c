"""Dynamic load balancing across data-parallel ranks (SPEC.md section 5).

The report says only "pre-estimate each sample's time complexity, then assign greedily". Our choice:
a sample's cost is a ViT term per image or frame (patches and patches^2, attention being quadratic
inside each image) plus an LLM term over the whole packed sequence (tokens and tokens^2); samples are
sorted by cost, largest first, and each goes to the currently least-loaded rank (LPT, which is within
4/3 of the optimal makespan). No assignment can beat max(largest sample, total / ranks).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class CostModel:
    """Coefficients of the per-sample cost estimate (arbitrary units; only ratios matter)."""

    vit_patch: float = 1.0
    """Cost per ViT patch (linear layers)."""
    vit_patch_sq: float = 1e-4
    """Cost per squared patch count of one image (attention within the image)."""
    llm_token: float = 4.0
    """Cost per LLM token (the decoder is wider and deeper than the ViT)."""
    llm_token_sq: float = 2e-4
    """Cost per squared token count of the sequence (causal attention)."""


def sample_cost(patches_per_image: Sequence[int], num_tokens: int, model: CostModel = CostModel()) -> float:
    """Estimated compute of one sample: sum over its images/frames of the ViT term, plus the LLM term."""
    vit = sum(model.vit_patch * p + model.vit_patch_sq * p * p for p in patches_per_image)
    return vit + model.llm_token * num_tokens + model.llm_token_sq * num_tokens * num_tokens


def assign_longest_first(costs: Sequence[float], num_ranks: int) -> list[list[int]]:
    """LPT: indices of samples per rank, each sample given to the least-loaded rank, largest first.

    Ties go to the lowest rank so that the assignment is deterministic on every rank.
    """
    if num_ranks < 1:
        raise ValueError(f"num_ranks must be >= 1, got {num_ranks}")
    buckets: list[list[int]] = [[] for _ in range(num_ranks)]
    heap = [(0.0, rank) for rank in range(num_ranks)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, rank = heapq.heappop(heap)
        buckets[rank].append(index)
        heapq.heappush(heap, (load + costs[index], rank))
    return buckets


def assign_round_robin(costs: Sequence[float], num_ranks: int) -> list[list[int]]:
    """The baseline a plain distributed sampler gives: sample i to rank i mod num_ranks."""
    return [list(range(rank, len(costs), num_ranks)) for rank in range(num_ranks)]


def rank_loads(assignment: Sequence[Sequence[int]], costs: Sequence[float]) -> list[float]:
    return [sum(costs[i] for i in bucket) for bucket in assignment]


def imbalance(assignment: Sequence[Sequence[int]], costs: Sequence[float]) -> float:
    """max / mean rank load: 1.0 is perfect balance."""
    loads = rank_loads(assignment, costs)
    mean = sum(loads) / len(loads)
    return max(loads) / mean if mean > 0 else 1.0


def lower_bound(costs: Sequence[float], num_ranks: int) -> float:
    """No assignment's makespan is below max(largest sample, total / ranks)."""
    return max(max(costs, default=0.0), sum(costs) / num_ranks)
