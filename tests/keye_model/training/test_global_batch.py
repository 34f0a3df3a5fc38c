"""Balancing over the global batch in the rank's ``Batches``: each optimizer step reads one window of
world x micro batch x accumulation samples, every rank takes its share micro batch by micro batch, and the
stream state saved after a step resumes at exactly the next window."""

from __future__ import annotations

import dataclasses

import pytest

from data_specs.presets import get_stage
from keye_model.processor import KeyeProcessor
from keye_model.tokenizer import load_tokenizer
from keye_model.training import balance
from keye_model.training.batches import Batches, estimate_cost
from keye_model.training.loader import ShardStream
from keye_model.training.run_config import RunConfig

WORLD, MICRO, ACCUM = 2, 1, 3


@pytest.fixture(scope="module")
def make_ranks(tokenizer_dir, shards, tmp_path_factory):
    processor = KeyeProcessor(load_tokenizer(tokenizer_dir))
    out = tmp_path_factory.mktemp("global-batch")

    def make(zero_stage: int = 2) -> list[Batches]:
        spec = dataclasses.replace(
            get_stage("tiny", "sft"), micro_batch_size=MICRO, grad_accum_steps=ACCUM, zero_stage=zero_stage
        )
        config = RunConfig(stage=spec, output_dir=str(out), tokenizer_dir=tokenizer_dir, shards=shards, seed=5)
        return [Batches(config, processor, rank, WORLD) for rank in range(WORLD)]

    return make


def step(ranks: list[Batches]) -> list[list[list[str]]]:
    """One optimizer step on every rank: ids[rank][micro]."""
    return [[[ex.sample_id for ex in batches.my_examples()] for _ in range(ACCUM)] for batches in ranks]


@pytest.mark.parametrize("zero_stage", [1, 2])
def test_each_step_spreads_one_window_over_ranks_and_micro_batches(make_ranks, shards, zero_stage):
    ranks = make_ranks(zero_stage)
    stream = iter(ShardStream(shards, seed=5))
    for _ in range(3):
        window = [next(stream) for _ in range(WORLD * MICRO * ACCUM)]
        ids = step(ranks)
        assert all(len(micro) == MICRO for rank in ids for micro in rank)  # micro batch 1: one sample each
        assert sorted(i for rank in ids for micro in rank for i in micro) == sorted(s["__key__"] for s in window)
        plan = balance.assign_global_batch(
            [estimate_cost(s) for s in window], WORLD, MICRO, ACCUM, meet_every_micro_batch=zero_stage >= 2
        )
        expected = [[[window[i]["__key__"] for i in micro] for micro in rank] for rank in plan]
        assert ids == expected  # every rank computed the same plan of the whole window


def test_state_saved_after_a_step_resumes_at_the_next_window(make_ranks):
    whole = make_ranks()
    first = step(whole)
    states = [batches.state_dict() for batches in whole]
    assert states[0] == states[1] and states[0]["samples_seen"] == WORLD * MICRO * ACCUM
    second, third = step(whole), step(whole)

    resumed = make_ranks()
    for batches, state in zip(resumed, states):
        batches.load_state_dict(state)
    assert [step(resumed), step(resumed)] == [second, third]
    seen = [i for ids in (first, second, third) for rank in ids for micro in rank for i in micro]
    assert len(set(seen)) == len(seen) == 3 * WORLD * MICRO * ACCUM  # 18 of the 24 samples, none twice


def test_stream_state_is_not_taken_in_the_middle_of_a_window(make_ranks):
    (batches, _) = make_ranks()
    batches.my_examples()
    with pytest.raises(AssertionError, match="2 micro batches of the window unread"):
        batches.state_dict()
