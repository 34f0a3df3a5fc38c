"""Each loss against a value computed by hand with plain math on small numbers."""

from __future__ import annotations

import math

import pytest
import torch

from keye_model import losses


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_token_and_sequence_logprobs_count_only_response_tokens():
    # Vocabulary of 2; logits favour token 1 by log(3): p(1) = 0.75, p(0) = 0.25.
    logits = torch.tensor([[[0.0, math.log(3.0)]] * 4])
    labels = torch.tensor([[-100, -100, 1, 0]])  # positions 1 and 2 predict labels 1 and 0
    logp, mask = losses.token_logprobs(logits, labels)
    assert mask.tolist() == [[False, True, True]]
    assert losses.sequence_logprobs(logits, labels).item() == pytest.approx(math.log(0.75) + math.log(0.25))


def test_weighted_lm_loss_counts_a_weight_as_repetition():
    logits = torch.tensor([[[0.0, math.log(3.0)]] * 3, [[0.0, 0.0]] * 3])
    labels = torch.tensor([[-100, 1, 1], [-100, 0, -100]])
    ce_a = -math.log(0.75)
    ce_b = -math.log(0.5)
    got = losses.weighted_lm_loss(logits, labels, torch.tensor([3.0, 1.0]))
    assert got.item() == pytest.approx((3 * ce_a + ce_b) / 4)


def test_mpo_matches_hand_computation_over_two_steps():
    beta = 0.1
    pc, pr = torch.tensor([-10.0, -12.0]), torch.tensor([-11.0, -9.0])
    rc, rr = torch.tensor([-11.0, -12.5]), torch.tensor([-10.0, -10.0])
    lr_c, lr_r = [1.0, 0.5], [-1.0, 1.0]
    gen = torch.tensor(2.0)
    running = losses.RunningRewardMean()
    first = losses.mpo_loss(
        policy_chosen_B=pc,
        policy_rejected_B=pr,
        ref_chosen_B=rc,
        ref_rejected_B=rr,
        generation=gen,
        reward_mean=running,
    )
    delta1 = beta * sum(lr_c + lr_r) / 4
    pref = -sum(logsig(beta * c - beta * r) for c, r in zip(lr_c, lr_r)) / 2
    qual = -sum(logsig(beta * c - delta1) + logsig(-(beta * r - delta1)) for c, r in zip(lr_c, lr_r)) / 2
    assert first.delta == pytest.approx(delta1)
    assert first.preference.item() == pytest.approx(pref)
    assert first.quality.item() == pytest.approx(qual)
    assert first.total.item() == pytest.approx(0.8 * pref + 0.2 * qual + 1.0 * 2.0)

    # Second step: delta is the equal-weight mean of both steps' batch means, current one included.
    second = losses.mpo_loss(
        policy_chosen_B=pc + 1,
        policy_rejected_B=pr,
        ref_chosen_B=rc,
        ref_rejected_B=rr,
        generation=gen,
        reward_mean=running,
    )
    delta2 = beta * sum([2.0, 1.5, -1.0, 1.0]) / 4
    assert second.delta == pytest.approx((delta1 + delta2) / 2)


def test_running_reward_mean_state_round_trips():
    a = losses.RunningRewardMean()
    a.update(0.2)
    b = losses.RunningRewardMean()
    b.load_state_dict(a.state_dict())
    assert b.update(0.4) == pytest.approx(0.3)


def test_group_advantages_use_unbiased_std():
    adv = losses.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]))
    std = math.sqrt(sum((r - 0.5) ** 2 for r in [1, 0, 0, 1]) / 3)
    assert adv.tolist() == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std], rel=1e-5)
    assert losses.group_advantages(torch.tensor([1.0, 1.0, 1.0])).abs().max().item() < 1e-5


def test_gspo_ratio_is_one_per_sequence_and_clipped_by_hand():
    # Rollout 0: three tokens with log-ratio 0.001 each (mean 0.001); rollout 1: two tokens,
    # log-ratios -0.002 and 0.0 (mean -0.001), its third position masked out (a large value that
    # must not count).
    old = torch.zeros(2, 3)
    new = torch.tensor([[0.001, 0.001, 0.001], [-0.002, 0.0, 5.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([1.0, -1.0])
    out = losses.gspo_loss(new, old, mask, adv)
    s0, s1 = math.exp(0.001), math.exp(-0.001)
    assert out.ratio_G.shape == (2,)
    assert out.ratio_G.tolist() == pytest.approx([s0, s1])
    # s0 > 1 + 4e-4 with A > 0: min picks the clipped 1.0004; s1 < 1 - 3e-4 with A < 0: min(-s1, -0.9997)
    # picks -0.9997 (the clipped value is the smaller objective).
    expected_j = (min(s0 * 1, 1.0004 * 1) + min(s1 * -1, 0.9997 * -1)) / 2
    assert out.loss.item() == pytest.approx(-expected_j, abs=1e-7)
    assert out.clipped_fraction == 1.0
    out.loss.backward()
    # Both terms are clipped, so no gradient flows to the policy; the masked token never gets one.
    assert new.grad.abs().sum().item() == 0.0


def test_gspo_unclipped_gradient_is_sequence_level():
    old = torch.zeros(1, 4)
    new = torch.zeros(1, 4, requires_grad=True)
    out = losses.gspo_loss(new, old, torch.ones(1, 4), torch.tensor([2.0]))
    out.loss.backward()
    # d(-s*A)/d logp_t = -A * s / T for every token alike: the ratio is shared by the whole sequence.
    assert new.grad[0].tolist() == pytest.approx([-0.5, -0.5, -0.5, -0.5])


def test_pooled_embedding_is_the_unit_concat_of_mean_and_max():
    tokens = torch.tensor([[1.0, 0.0], [3.0, -2.0]])
    expected = torch.tensor([2.0, -1.0, 3.0, 0.0]) / math.sqrt(14.0)
    assert torch.allclose(losses.pooled_embedding(tokens), expected)


def test_sigmoid_contrastive_loss_by_hand_with_a_repeated_caption():
    """Two images, captions 0 and 1 the same text: every pair is positive; a third image is negative to both."""
    image = torch.eye(3)
    text = torch.eye(3)
    positive = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    scale, bias = 10.0, -10.0
    total = 0.0
    for i in range(3):
        for j in range(3):
            logit = scale * float(i == j) + bias
            label = 1.0 if positive[i, j] else -1.0
            total += -math.log(1.0 / (1.0 + math.exp(-label * logit)))
    loss = losses.sigmoid_contrastive_loss(image, text, positive, scale=scale, bias=bias)
    assert loss.item() == pytest.approx(total / 3, rel=1e-6)
    # aligned embeddings with their own captions score lower than swapped ones
    swapped = losses.sigmoid_contrastive_loss(image, text[[2, 0, 1]], positive, scale=scale, bias=bias)
    assert swapped > loss
