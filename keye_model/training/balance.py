"""Dynamic load balancing across data-parallel ranks (SPEC.md section 5).

The report says only "pre-estimate each sample's time complexity, then assign greedily". Our choice:
a sample's cost is a ViT term per image or frame (patches and patches^2, attention being quadratic
inside each image) plus an LLM term over the whole packed sequence (tokens and tokens^2); samples are
sorted by cost, largest first, and each goes to the currently least-loaded rank (LPT, which is within
4/3 of the optimal makespan). No assignment can beat max(largest sample, total / ranks).

Over the global batch. An optimizer step reads ``ranks * micro_batch_size * grad_accum_steps`` samples;
balancing them together (``assign_global_batch``) still works when a micro batch holds one sample per
rank (keye-8b's setting), where balancing one micro batch at a time has nothing to choose.
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


def assign_global_batch(
    costs: Sequence[float],
    num_ranks: int,
    micro_batch_size: int,
    num_micro_batches: int,
    *,
    meet_every_micro_batch: bool = True,
) -> list[list[list[int]]]:
    """``plan[rank][micro]``: the sample indices each rank trains on in each micro batch of one optimizer step.

    Every rank gets exactly ``micro_batch_size`` samples per micro batch (never an empty one: all ranks
    run the same number of forwards). Samples go largest first to the rank least loaded so far in the
    whole step that still has room (ties to the lowest rank), so the step's totals even out. Where the
    ranks wait for each other decides the rest:

    - ``meet_every_micro_batch`` (ZeRO-2 reduces gradients and ZeRO-3 gathers parameters in every micro
      batch): the sorted samples are cut into one slice of ``num_ranks * micro_batch_size`` per micro
      batch, so the ranks of one micro batch get samples of similar cost (with micro batch 1, cutting
      the sorted order is what minimizes the sum of each micro batch's slowest sample);
    - otherwise (ZeRO-1 meets once, at the optimizer step): the whole window is balanced at once, each
      rank taking ``micro_batch_size * num_micro_batches`` samples, split into micro batches afterwards.

    Worked example, 2 ranks, micro batch 1, 2 micro batches, costs [1, 9, 4, 6], meeting every micro
    batch: sorted 9 (i1), 6 (i3) | 4 (i2), 1 (i0). Micro batch 0: 9 -> rank 0, 6 -> rank 1; micro batch 1:
    rank 1 (load 6) takes 4, rank 0 (load 9) takes 1. Plan [[[1], [0]], [[3], [2]]], loads 10 and 10.
    Balancing each micro batch alone from zero (stream pairs [1, 9] then [4, 6]) gives rank 0 9 + 6 = 15
    and rank 1 1 + 4 = 5.
    """
    if num_ranks < 1 or micro_batch_size < 1 or num_micro_batches < 1:
        raise ValueError(
            f"ranks, micro batch size and micro batches must be >= 1: {num_ranks}, {micro_batch_size}, "
            f"{num_micro_batches}"
        )
    slice_size = num_ranks * micro_batch_size
    if len(costs) != slice_size * num_micro_batches:
        raise ValueError(
            f"a global batch of {num_ranks} ranks x {micro_batch_size} x {num_micro_batches} micro batches "
            f"holds {slice_size * num_micro_batches} samples, got {len(costs)} costs"
        )
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    loads = [0.0] * num_ranks
    if meet_every_micro_batch:
        slices, room = (
            [order[m * slice_size : (m + 1) * slice_size] for m in range(num_micro_batches)],
            micro_batch_size,
        )
    else:
        slices, room = [order], micro_batch_size * num_micro_batches
    shares: list[list[list[int]]] = [[] for _ in range(num_ranks)]  # per rank, per slice, largest first
    for part in slices:
        taken = [[] for _ in range(num_ranks)]
        heap = [(loads[rank], rank) for rank in range(num_ranks)]
        heapq.heapify(heap)
        for index in part:
            _, rank = heapq.heappop(heap)
            taken[rank].append(index)
            loads[rank] += costs[index]
            if len(taken[rank]) < room:
                heapq.heappush(heap, (loads[rank], rank))
        for rank in range(num_ranks):
            shares[rank].append(taken[rank])
    plan = []
    for rank_shares in shares:
        flat = [index for part in rank_shares for index in part]
        plan.append([sorted(flat[m * micro_batch_size : (m + 1) * micro_batch_size]) for m in range(num_micro_batches)])
    return plan


def micro_batch_imbalance(plan: Sequence[Sequence[Sequence[int]]], costs: Sequence[float]) -> float:
    """Sum over micro batches of the slowest rank's load, over the mean rank load of the whole step: the
    step's time relative to perfect balance when ranks wait for each other at every micro batch."""
    num_ranks = len(plan)
    total = sum(costs[i] for rank in plan for micro in rank for i in micro)
    slowest = sum(
        max(sum(costs[i] for i in plan[rank][micro]) for rank in range(num_ranks)) for micro in range(len(plan[0]))
    )
    return slowest * num_ranks / total if total > 0 else 1.0


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
