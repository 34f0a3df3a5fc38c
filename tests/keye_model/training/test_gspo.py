"""GSPO learns: a few dozen steps on a small fixed prompt set raise a verifiable reward well above its
start; and a GSPO stage run by the runner writes the report's hint table to its metrics.

The overfit task: reward 1 when the response starts with a vowel. An untrained tiny model starts about
a third of its responses that way (sampled at temperature 1 from a nearly uniform next-token
distribution), so groups carry a learning signal from the first step, and the policy must move its
first-token distribution to raise it. It is measured on fresh samples (not the training rollouts),
before and after.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from data_specs.presets import get_preset
from data_specs.stages import RLSpec
from keye_model import special_tokens as st
from keye_model.config import KeyeConfig
from keye_model.model import KeyeForConditionalGeneration
from keye_model.processor import KeyeProcessor
from keye_model.rewards import Reward, RewardSample
from keye_model.tokenizer import load_tokenizer
from keye_model.training import rl
from keye_model.training.rl import ALL_WRONG_KEYS, RLPrompt, all_wrong_table
from keye_model.training.runner import RunConfig, run_stage

QUESTIONS = ("Say a word. /no_think", "Name a thing. /no_think", "Tell me something. /no_think", "Go on. /no_think")


def starts_with_vowel(sample: RewardSample) -> Reward:
    """The verifiable reward of the overfit test."""
    text = sample.response.strip()
    value = 1.0 if text[:1].lower() in tuple("aeiou") else 0.0
    return Reward(total=value, parts={"rule": value})


def vowel_rate(model, processor: KeyeProcessor, spec: RLSpec, seed: int) -> float:
    """Share of 32 fresh responses per question that start with a vowel."""
    hits = []
    for n, question in enumerate(QUESTIONS):
        conversation = [{"role": "user", "content": question}]
        _, response, _ = rl.sample_responses(model, processor, conversation, num=32, spec=spec, seed=seed + n)
        hits += [
            starts_with_vowel(RewardSample(id="x", query=question, response=processor.decode_response(r))).total
            for r in response
        ]
    return sum(hits) / len(hits)


def test_all_wrong_table_is_cumulative_over_levels():
    table = all_wrong_table({"L0": 6, "L1": 2, "L2": 0, "L3": 0, "L4": 0, "L5": 1, "unsolved": 1})
    assert list(table) == list(ALL_WRONG_KEYS)
    assert [round(v, 6) for v in table.values()] == [0.4, 0.2, 0.2, 0.2, 0.2, 0.1]
    with pytest.raises(ValueError, match="no groups"):
        all_wrong_table({})


def test_gspo_overfits_a_verifiable_reward(tokenizer_dir):
    import deepspeed

    from keye_model.training.runner import init_distributed

    processor = KeyeProcessor(load_tokenizer(tokenizer_dir))
    tok = processor.tokenizer
    config = dataclasses.replace(
        KeyeConfig.preset("tiny"),
        image_token_id=tok.convert_tokens_to_ids(st.IMAGE_PAD),
        video_token_id=tok.convert_tokens_to_ids(st.VIDEO_PAD),
    )
    torch.manual_seed(0)
    policy = KeyeForConditionalGeneration(config)
    init_distributed()
    engine, *_ = deepspeed.initialize(
        model=policy,
        optimizer=torch.optim.AdamW(policy.parameters(), lr=5e-3),
        config={
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": 2},
        },
    )
    # The SPEC's clip range and mini-batching; short responses, since only the first token is rewarded.
    # Four prompts a step: the clip range leaves later mini-batches little gradient, so the signal must be
    # wide enough to learn from whatever tokenizer the process trained (its corpus varies with imports).
    spec = RLSpec(group_size=8, num_minibatches=2, max_new_tokens=2, temperature=1.0, max_hint_level=0)
    prompts = [RLPrompt(id=f"p{i}", conversation=[{"role": "user", "content": q}]) for i, q in enumerate(QUESTIONS)]
    before = vowel_rate(policy, processor, spec, seed=10_000)
    history = rl.run_gspo(engine, policy, processor, prompts, spec, starts_with_vowel, num_steps=40, prompts_per_step=4)
    after = vowel_rate(policy, processor, spec, seed=20_000)
    rewards = [m.mean_reward for m in history]
    assert 0.1 < before < 0.6, before  # the task is learnable from the start: groups are mixed
    # Measured: 0.20-0.22 -> 0.61-1.0 over model seeds and the tokenizers a process may train.
    assert after > before + 0.3, (before, after, rewards)
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.2, rewards


@pytest.fixture(scope="module")
def hinted_shard(tmp_path_factory) -> str:
    """Four text questions with a reference and five hints each."""
    import webdataset as wds

    path = tmp_path_factory.mktemp("hinted") / "rl-000000.tar"
    with wds.TarWriter(str(path), mtime=0) as writer:
        for i in range(4):
            record = {
                "id": f"h{i}",
                "source": "test",
                "modality": "text",
                "task": "vqa",
                "question": f"What is {i} plus {i}? /no_think",
                "answer": str(2 * i + 100),
                "media_path": None,
                "tokens": 12,
                "meta": {"hints": [f"hint {k}" for k in range(1, 6)]},
            }
            writer.write({"__key__": record["id"], "json": json.dumps(record).encode()})
    return str(path)


def test_gspo_stage_writes_the_hint_table_to_its_metrics(tmp_path, tokenizer_dir, hinted_shard):
    spec = dataclasses.replace(get_preset("tiny").stage("gspo"), num_steps=2, checkpoint_every=1000)
    config = RunConfig(
        stage=spec, output_dir=str(tmp_path / "gspo"), tokenizer_dir=tokenizer_dir, shards=(hinted_shard,)
    )
    run_stage(config)
    rows = [json.loads(line) for line in (tmp_path / "gspo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["gspo/groups"] for r in rows] == [2.0, 4.0]  # cumulative over the stage: 2 prompts a step
    last = rows[-1]
    table = [last[f"gspo/{key}"] for key in ALL_WRONG_KEYS]
    assert table == sorted(table, reverse=True)  # cumulative: never rises with the level
    # the table agrees with the per-step counts of the groups' first correct level
    counts = {key: sum(r[f"hint_level_{key}"] for r in rows) for key in ("L0", "L1", "L2", "L3", "L4", "L5")}
    assert last["gspo/all_wrong_no_hint"] == pytest.approx(1 - counts["L0"] / 4)
    assert last["gspo/all_wrong_L5"] == pytest.approx(1 - sum(counts.values()) / 4)
