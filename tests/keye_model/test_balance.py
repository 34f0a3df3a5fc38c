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
