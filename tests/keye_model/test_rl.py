"""GSPO pieces on the real tiny model, the tiny tokenizer and a real DeepSpeed engine (ZeRO-2, CPU).

The reward functions here are deterministic test rewards with known outcomes (they look at the prompt,
the rollout index or a fixed table, not at answer quality): a random tiny model answers nothing right,
so outcomes must be set by the test to check the control flow around them.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from data_specs.stages import RLSpec
from keye_model import special_tokens as st
from keye_model.config import KeyeConfig
from keye_model.losses import group_advantages, gspo_loss
from keye_model.model import KeyeForConditionalGeneration
from keye_model.processor import KeyeProcessor
from keye_model.rewards import Reward, RewardSample
from keye_model.tokenizer import tiny_tokenizer
from keye_model.training import rl
from keye_model.training.rl import RLPrompt
from keye_model.training.rl_iteration import ColdStartSample, pass_rate_filter, rejection_sample

SPEC = RLSpec(group_size=4, num_minibatches=1, max_new_tokens=6, temperature=0.7, max_hint_level=5)
HINTS = ("[L1] a concept", "[L2] a strategy", "[L3] a formula", "[L4] a first step", "[L5] the solution")


@pytest.fixture(scope="module")
def processor(tmp_path_factory) -> KeyeProcessor:
    return KeyeProcessor(tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def tiny_model(processor: KeyeProcessor, seed: int) -> KeyeForConditionalGeneration:
    tok = processor.tokenizer
    config = dataclasses.replace(
        KeyeConfig.preset("tiny"),
        image_token_id=tok.convert_tokens_to_ids(st.IMAGE_PAD),
        video_token_id=tok.convert_tokens_to_ids(st.VIDEO_PAD),
    )
    torch.manual_seed(seed)
    return KeyeForConditionalGeneration(config)


@pytest.fixture(scope="module")
def model(processor) -> KeyeForConditionalGeneration:
    return tiny_model(processor, 0)


@pytest.fixture(scope="module")
def engine(processor):
    """A ZeRO-2 DeepSpeed engine on CPU around its own tiny policy (so updates do not leak into ``model``)."""
    import deepspeed

    from keye_model.training.runner import init_distributed

    init_distributed()  # a world of one on gloo, as the runner sets it up
    policy = tiny_model(processor, 1)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    engine, *_ = deepspeed.initialize(
        model=policy,
        optimizer=optimizer,
        config={
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": 2},
        },
    )
    return engine


def prompt(pid: str = "p1", text: str = "What colour is the circle? /no_think", **kw) -> RLPrompt:
    return RLPrompt(id=pid, conversation=[{"role": "user", "content": text}], reference="blue", **kw)


def recompute(model, group: rl.RolloutGroup, i: int, temperature: float) -> torch.Tensor:
    """Log-probs of row i's real response tokens from one unpadded forward (no mask, default positions)."""
    n = int(group.response_mask[i].sum())
    ids = torch.cat([group.prompt_ids, group.response_ids[i, :n]])[None]
    with torch.no_grad():
        logits = model(
            input_ids=ids,
            pixel_values=group.pixel_values if group.pixel_values.numel() else None,
            grid_hw=group.grid_hw if group.grid_hw.numel() else None,
        ).logits[0]
    p = group.prompt_ids.shape[0]
    logp = (logits[p - 1 : p - 1 + n].float() / temperature).log_softmax(-1)
    return logp.gather(-1, group.response_ids[i, :n, None]).squeeze(-1)


# ---------------------------------------------------------------- prompts and rollouts


def test_hint_goes_after_the_query_and_before_the_think_suffix():
    p = prompt(hints=HINTS)
    assert rl.with_hint(p, 0) is p.conversation
    assert rl.with_hint(p, 2)[-1]["content"] == "What colour is the circle?\n\nHint: [L2] a strategy /no_think"
    parts = RLPrompt(
        id="m",
        hints=HINTS,
        conversation=[
            {"role": "user", "content": [{"type": "image", "image": "x.png"}, {"type": "text", "text": "Count."}]}
        ],
    )
    assert rl.with_hint(parts, 1)[-1]["content"][1] == {"type": "text", "text": "Count.\n\nHint: [L1] a concept"}
    assert parts.conversation[-1]["content"][1]["text"] == "Count."  # the prompt itself is untouched
    assert p.think_mode is False and parts.think_mode is None
    with pytest.raises(ValueError, match="prompt p1: hint level 6"):
        rl.with_hint(p, 6)
    with pytest.raises(ValueError, match="prompt x: 6 hints"):
        prompt("x", hints=HINTS + ("more",))


def test_stop_mask_keeps_tokens_through_the_first_stop(processor):
    end, pad = processor.tokenizer.convert_tokens_to_ids(st.IM_END), processor.tokenizer.pad_token_id
    response = torch.tensor([[5, end, pad, pad], [5, 6, 7, 8], [end, 9, end, 9]])
    assert rl._stop_mask(response, processor.tokenizer).int().tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_rollout_group_logprobs_equal_a_separate_recomputation(model, processor, photos):
    image_prompt = RLPrompt(
        id="img",
        reference="coffee",
        conversation=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": photos["coffee"][:56, :56]},
                    {"type": "text", "text": "What is this? /no_think"},
                ],
            }
        ],
    )
    group = rl.rollout_group(model, processor, image_prompt, SPEC, 0, generator_seed=3)
    assert group.response_ids.shape[0] == 4 and group.response_ids.shape[1] <= SPEC.max_new_tokens
    assert group.grid_hw.tolist() == [[4, 4]] and group.rewards is None
    assert bool((group.old_logp[~group.response_mask] == 0).all())
    for i in range(group.size):
        n = int(group.response_mask[i].sum())
        torch.testing.assert_close(
            group.old_logp[i, :n], recompute(model, group, i, SPEC.temperature), rtol=1e-4, atol=1e-5
        )
    again = rl.rollout_group(model, processor, image_prompt, SPEC, 0, generator_seed=3)
    assert torch.equal(again.response_ids, group.response_ids)  # the seed fixes the samples


def test_padded_mixed_batch_equals_per_row_forwards(model, processor, photos):
    """Rows of different prompt and response lengths, one with an image, in one right-padded forward."""
    tok = processor.tokenizer
    end, pad = tok.convert_tokens_to_ids(st.IM_END), tok.pad_token_id
    text = rl.rollout_group(model, processor, prompt("t", "Hi? /no_think"), SPEC, 0, generator_seed=1)
    image_prompt = RLPrompt(
        id="i",
        conversation=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": photos["rocket"][:56, :84]},
                    {"type": "text", "text": "Describe it, please."},
                ],
            }
        ],
    )
    image = rl.rollout_group(
        model, processor, image_prompt, dataclasses.replace(SPEC, max_new_tokens=4), 0, generator_seed=2
    )
    text.response_ids[0, 3:] = torch.tensor([end] + [pad] * (text.response_ids.shape[1] - 4))  # stops early
    text.response_mask = rl._stop_mask(text.response_ids, tok)
    rows = [(text, 0), (image, 1), (text, 2), (image, 0)]
    with torch.no_grad():
        logp, mask = rl.response_logprobs(model, rows, SPEC.temperature)
    assert logp.shape == mask.shape == (4, text.response_ids.shape[1])
    assert mask.sum(-1).tolist() == [4, 4, text.response_ids.shape[1], 4]
    for n, (group, i) in enumerate(rows):
        count = int(mask[n].sum())
        torch.testing.assert_close(logp[n, :count], recompute(model, group, i, SPEC.temperature), rtol=1e-4, atol=1e-5)
        assert bool((logp[n, count:] == 0).all())


# ---------------------------------------------------------------- progressive hints


def marker_reward(levels: set[int], seen: list[int]):
    """Test reward: 1.0 exactly when the prompt the policy saw carries the hint marker of one of ``levels``."""

    def reward(sample: RewardSample) -> Reward:
        seen.append(sample.hint_level)
        hit = any(f"[L{k}]" in sample.prompt_text for k in levels)
        return Reward(total=1.0 if hit else 0.0, parts={"rule": 1.0 if hit else 0.0})

    return reward


def test_progressive_hints_take_the_first_level_with_a_correct_rollout(model, processor):
    seen: list[int] = []
    reward = marker_reward({3, 4, 5}, seen)
    group = rl.progressive_hint_rollout(model, processor, prompt(hints=HINTS), SPEC, reward, generator_seed=0)
    assert group.hint_level == 3 and group.solved and all(group.correct)
    assert seen == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4  # low to high, stopping at the first success
    assert "[L3] a formula /no_think" in processor.decode(group.prompt_ids)
    assert rl.hint_histogram([group])["L3"] == 1


def test_progressive_hints_stop_at_max_level_and_skip_solved_prompts(model, processor):
    seen: list[int] = []
    capped = dataclasses.replace(SPEC, max_hint_level=2)
    group = rl.progressive_hint_rollout(
        model, processor, prompt(hints=HINTS), capped, marker_reward({3}, seen), generator_seed=0
    )
    assert seen == [0] * 4 + [1] * 4 + [2] * 4
    assert group.hint_level == 0 and not group.solved and group.rewards.tolist() == [0.0] * 4
    assert rl.hint_histogram([group]) == {"L0": 0, "L1": 0, "L2": 0, "L3": 0, "L4": 0, "L5": 0, "unsolved": 1}
    seen.clear()
    always = lambda s: Reward(total=1.0, parts={"rule": 1.0})  # noqa: E731 - a test reward: all correct
    group = rl.progressive_hint_rollout(model, processor, prompt(hints=HINTS), SPEC, always, generator_seed=0)
    assert group.hint_level == 0 and group.solved


# ---------------------------------------------------------------- GSPO update


def scored_group(engine, processor, rewards: list[float], seed: int = 0) -> rl.RolloutGroup:
    group = rl.rollout_group(engine.module, processor, prompt(), SPEC, 0, generator_seed=seed)
    group.rewards = torch.tensor(rewards)
    return group


def test_one_ratio_per_rollout_and_all_ones_before_an_update(engine, processor):
    group = scored_group(engine, processor, [1.0, 0.0, 0.0, 1.0])
    new_logp, mask = rl.response_logprobs(engine, [(group, i) for i in range(4)], SPEC.temperature)
    out = gspo_loss(new_logp, group.old_logp, mask, group_advantages(group.rewards))
    assert out.ratio_G.shape == (4,)
    assert torch.equal(out.ratio_G, torch.ones(4))  # same policy, same batch: new == old exactly
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6)  # -mean(A), and A sums to 0
    engine.zero_grad()


def test_update_first_minibatch_loss_by_hand_and_weights_change(engine, processor):
    group = scored_group(engine, processor, [1.0, 1.0, 0.0, 0.0], seed=5)
    before = {name: p.detach().clone() for name, p in engine.module.named_parameters()}
    metrics = rl.gspo_update(engine, engine.module, processor, [group], dataclasses.replace(SPEC, num_minibatches=2))
    # mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735, A = [0.866, 0.866, -0.866, -0.866]; the first
    # mini-batch (rollouts 0, 1) runs before any step, so s = 1 and loss = -mean(A_0, A_1) = -0.866.
    assert metrics.minibatch_losses[0] == pytest.approx(-0.5 / 0.57735027, rel=1e-4)
    assert metrics.minibatch_ratios[0] == pytest.approx((1.0, 1.0), abs=1e-6)
    assert len(metrics.minibatch_ratios) == 2 and len(metrics.minibatch_ratios[1]) == 2
    assert metrics.minibatch_ratios[1] != pytest.approx((1.0, 1.0), abs=1e-7)  # the policy moved after step 1
    assert metrics.num_rollouts == 4 and metrics.mean_reward == pytest.approx(0.5)
    assert metrics.hint_levels["L0"] == 1
    changed = [name for name, p in engine.module.named_parameters() if not torch.equal(p, before[name])]
    assert any(name.startswith("language_model") for name in changed)


def test_update_rejects_unscored_groups_and_too_few_rollouts(engine, processor):
    group = rl.rollout_group(engine.module, processor, prompt(), SPEC, 0, generator_seed=0)
    with pytest.raises(ValueError, match="prompts \\['p1'\\] have no rewards"):
        rl.gspo_update(engine, engine.module, processor, [group], SPEC)
    group.rewards = torch.zeros(4)
    with pytest.raises(ValueError, match="4 rollouts cannot fill 8 mini-batches"):
        rl.gspo_update(engine, engine.module, processor, [group], dataclasses.replace(SPEC, num_minibatches=8))


def test_run_gspo_returns_metrics_per_step(engine, processor):
    table = {"a": [1.0, 0.0], "b": [0.0, 0.0]}  # test reward: by prompt id and call count
    calls: dict[str, int] = {"a": 0, "b": 0}

    def reward(sample: RewardSample) -> Reward:
        value = table[sample.id][calls[sample.id] % 2]
        calls[sample.id] += 1
        return Reward(total=value, parts={"rule": value})

    prompts = [prompt("a"), prompt("b", hints=HINTS[:1])]
    history = rl.run_gspo(
        engine, engine.module, processor, prompts, dataclasses.replace(SPEC, num_minibatches=2), reward, num_steps=2
    )
    assert len(history) == 2 and all(m.num_rollouts == 4 for m in history)
    # step 0: prompt a, right twice at L0; step 1: prompt b, never right with or without its hint.
    assert history[0].hint_levels["L0"] == 1 and history[0].mean_reward == pytest.approx(0.5)
    assert history[1].hint_levels["unsolved"] == 1 and history[1].mean_reward == 0.0
    assert calls == {"a": 4, "b": 8}


# ---------------------------------------------------------------- iteration


def test_pass_rate_filter_keeps_only_prompts_between_0_and_1(model, processor):
    outcomes = {"always": [1.0] * 4, "never": [0.0] * 4, "sometimes": [1.0, 0.0, 0.0, 0.0]}  # test reward table
    calls = {key: 0 for key in outcomes}

    def reward(sample: RewardSample) -> Reward:
        value = outcomes[sample.id][calls[sample.id]]
        calls[sample.id] += 1
        return Reward(total=value, parts={"rule": value})

    prompts = [prompt(pid) for pid in ("always", "never", "sometimes")]
    result = pass_rate_filter(model, processor, prompts, 4, reward, spec=SPEC)
    assert [p.id for p in result.kept] == ["sometimes"]
    assert result.accuracy == {"always": 1.0, "never": 0.0, "sometimes": 0.25}


def test_rejection_sampling_replaces_exactly_the_preferred(model, processor):
    references = {
        "Question one? /no_think": "ref one",
        "Question two, swap? /no_think": "ref two",
        "Question three, swap? /no_think": "ref three",
    }
    seen: dict[str, str] = {}

    def judge(query: str, a: str, b: str) -> float:
        """Test judge: on "swap" queries prefers the non-reference answer, otherwise the reference."""
        new = b if a == references[query] else a
        seen[query] = new
        a_is_new = a == new
        return 1.0 if a_is_new == ("swap" in query) else 0.0

    samples = [
        ColdStartSample(
            id=f"s{k}", conversation=[{"role": "user", "content": q}, {"role": "assistant", "content": ref}]
        )
        for k, (q, ref) in enumerate(references.items())
    ]
    result = rejection_sample(model, processor, samples, judge, spec=SPEC)
    assert result.replaced == ("s1", "s2")
    assert result.preference == {"s0": 0.0, "s1": 1.0, "s2": 1.0}
    assert result.samples[0] is samples[0]
    for sample in result.samples[1:]:
        query, answer = sample.conversation[0]["content"], sample.conversation[1]
        assert answer["role"] == "assistant" and answer["content"] == seen[query]  # the judged RL answer
        assert "reasoning_content" not in answer  # /no_think: no reasoning
    with pytest.raises(ValueError, match="cold-start sample bad: the conversation must end with an assistant"):
        rejection_sample(
            model, processor, [ColdStartSample(id="bad", conversation=samples[0].conversation[:1])], judge, spec=SPEC
        )


def test_rejection_sampling_never_takes_a_wrong_answer_to_a_checkable_problem(model, processor):
    def judge(query: str, a: str, b: str) -> float:
        """Test judge: always prefers the RL answer to the reference ("ref")."""
        return 0.0 if a == "ref" else 1.0

    def sample(sid: str, question: str, reference: str | None = None) -> ColdStartSample:
        turns = [{"role": "user", "content": question}, {"role": "assistant", "content": "ref"}]
        return ColdStartSample(id=sid, conversation=turns, reference=reference)

    questions = ("Question one? /no_think", "Question two? /no_think")
    free = [sample(f"s{k}", q) for k, q in enumerate(questions)]
    unchecked = rejection_sample(model, processor, free, judge, spec=SPEC)
    assert unchecked.replaced == ("s0", "s1") and unchecked.wrong == ()
    rl_answer = unchecked.samples[0].conversation[-1]["content"]  # sampling is seeded per sample: same again
    assert rl_answer.strip()
    checked = [sample("s0", questions[0], reference=rl_answer), sample("s1", questions[1], reference="zebra crossing")]
    result = rejection_sample(model, processor, checked, judge, spec=SPEC)
    assert result.replaced == ("s0",) and result.wrong == ("s1",)
    assert result.samples[1] is checked[1] and set(result.preference) == {"s0"}  # a wrong answer is not judged
