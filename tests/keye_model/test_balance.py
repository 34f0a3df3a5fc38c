from __future__ import annotations

import random

import pytest

from keye_model.training import balance


def realistic_costs(n: int = 512, seed: int = 0) -> list[float]:
    """A long-tailed mix: many short text/image samples, some multi-image, a few long videos."""
    rng = random.Random(seed)
    costs = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.3:  # text only
            costs.append(balance.sample_cost([], rng.randint(64, 1024)))
        elif kind < 0.85:  # one image
            patches = rng.choice([64, 256, 1024, 4096])
            costs.append(balance.sample_cost([patches], patches // 4 + rng.randint(32, 512)))
        else:  # a video of 16-64 frames
            frames = [rng.choice([192, 768]) for _ in range(rng.randint(16, 64))]
            costs.append(balance.sample_cost(frames, sum(frames) // 4 + 256))
    return costs


def test_lpt_on_hand_example_is_optimal():
    # Costs 7,5,4,3,3 on 2 ranks: 7->r0, 5->r1, 4->r1 (9), 3->r0 (10), 3->r1 (12); the bound is 22/2 = 11.
    assignment = balance.assign_longest_first([7, 5, 4, 3, 3], 2)
    assert assignment == [[0, 3], [1, 2, 4]]
    assert balance.rank_loads(assignment, [7, 5, 4, 3, 3]) == [10, 12]
    assert balance.lower_bound([7, 5, 4, 3, 3], 2) == 11


@pytest.mark.parametrize("ranks", [2, 8, 32])
def test_lpt_beats_round_robin_on_a_realistic_length_mix(ranks):
    costs = realistic_costs()
    lpt = balance.assign_longest_first(costs, ranks)
    rr = balance.assign_round_robin(costs, ranks)
    assert sorted(i for bucket in lpt for i in bucket) == list(range(len(costs)))
    assert balance.imbalance(lpt, costs) < balance.imbalance(rr, costs)
    # LPT's makespan is within 4/3 of the lower bound, hence of the optimum.
    assert max(balance.rank_loads(lpt, costs)) <= 4 / 3 * balance.lower_bound(costs, ranks) + 1e-9


def test_cost_grows_quadratically_with_patches_of_one_image():
    one_big = balance.sample_cost([4096], 0)
    four_small = balance.sample_cost([1024] * 4, 0)
    assert one_big > four_small


def test_global_batch_hand_example():
    # balance.assign_global_batch's docstring: sorted 9, 6 | 4, 1; the second micro batch evens the loads.
    plan = balance.assign_global_batch([1, 9, 4, 6], num_ranks=2, micro_batch_size=1, num_micro_batches=2)
    assert plan == [[[1], [0]], [[3], [2]]]
    assert balance.rank_loads([sum(rank, []) for rank in plan], [1, 9, 4, 6]) == [10, 10]


@pytest.mark.parametrize(("ranks", "micro_batch", "accum"), [(8, 1, 8), (4, 2, 4), (3, 1, 1), (2, 3, 5)])
def test_global_batch_fills_every_micro_batch_with_each_sample_once(ranks, micro_batch, accum):
    costs = realistic_costs(ranks * micro_batch * accum, seed=ranks + accum)
    plan = balance.assign_global_batch(costs, ranks, micro_batch, accum)
    assert len(plan) == ranks and all(len(rank) == accum for rank in plan)
    assert all(len(micro) == micro_batch for rank in plan for micro in rank)
    assert sorted(i for rank in plan for micro in rank for i in micro) == list(range(len(costs)))


def test_global_batch_rejects_a_window_of_the_wrong_size():
    with pytest.raises(ValueError, match="holds 16 samples, got 15 costs"):
        balance.assign_global_batch([1.0] * 15, 8, 1, 2)


def per_micro_batch_plan(costs, ranks, micro_batch, accum):
    """What balancing one micro batch at a time gives: each stream window of ranks x micro_batch alone."""
    size = ranks * micro_batch
    plan = [[[] for _ in range(accum)] for _ in range(ranks)]
    for micro in range(accum):
        window = costs[micro * size : (micro + 1) * size]
        for rank, (share,) in enumerate(balance.assign_global_batch(window, ranks, micro_batch, 1)):
            plan[rank][micro] = [micro * size + i for i in share]
    return plan


def test_micro_batch_of_one_is_balanced_over_the_global_batch():
    """keye-8b's setting (micro batch 1, 8 accumulation steps) on 8 ranks. Balancing each micro batch alone
    has nothing to choose (and, ties going to rank 0, gives rank 0 every micro batch's largest sample);
    over the global batch, the step's slowest rank comes near the bound, and so does each micro batch's
    slowest rank when the ranks meet in every micro batch (ZeRO-2/3)."""
    ranks, micro_batch, accum = 8, 1, 8
    size = ranks * micro_batch * accum
    costs = realistic_costs(size * 40, seed=3)
    rows = []
    for start in range(0, len(costs), size):
        window = costs[start : start + size]
        every = balance.assign_global_batch(window, ranks, micro_batch, accum)
        once = balance.assign_global_batch(window, ranks, micro_batch, accum, meet_every_micro_batch=False)
        old = per_micro_batch_plan(window, ranks, micro_batch, accum)
        rows.append(
            {
                "bound": balance.lower_bound(window, ranks) / (sum(window) / ranks),
                **{
                    f"step_{name}": balance.imbalance([sum(rank, []) for rank in plan], window)
                    for name, plan in (("every", every), ("once", once), ("old", old))
                },
                **{
                    f"micro_{name}": balance.micro_batch_imbalance(plan, window)
                    for name, plan in (("every", every), ("once", once), ("old", old))
                },
            }
        )
    mean = {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}
    assert mean["step_old"] > 3 and mean["micro_old"] > 3  # rank 0 always holds the largest sample
    assert mean["step_once"] < 1.05 * mean["bound"]  # ZeRO-1: the step's totals are what counts
    assert mean["micro_every"] < mean["micro_once"] < mean["micro_old"] / 2  # ZeRO-2/3: each micro batch counts
    assert mean["step_every"] < mean["step_old"] / 2
    # cutting the sorted window is optimal for the micro-batch-1 sum of maxima: never worse than the old plan
    assert all(row["micro_every"] <= row["micro_old"] + 1e-9 for row in rows)
