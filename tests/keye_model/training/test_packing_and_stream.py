from __future__ import annotations

import torch

from keye_model.losses import IGNORE_INDEX
from keye_model.training.balance import assign_global_batch
from keye_model.training.loader import ShardStream
from keye_model.training.packing import Encoded, pack


def encoded(sample_id: str, n: int, weight: float = 1.0) -> Encoded:
    labels = torch.arange(100, 100 + n)
    labels[: n // 2] = IGNORE_INDEX  # first half prompt, second half response
    return Encoded(
        sample_id, torch.arange(1, n + 1), labels, torch.zeros(0, 588), torch.zeros(0, 2, dtype=torch.long), weight
    )


def test_pack_matches_the_worked_example():
    packed = pack([encoded("a", 5), encoded("b", 2), encoded("c", 4)], seq_len=8, pad_id=0)
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1], [0, 1, 2, 3, 0, 1, 2]]
    assert packed.sample_ids == ["a", "b", "c"]
    assert packed.efficiency == 11 / 14
    # The first token of every packed sample is never a target.
    assert packed.labels[0, 5].item() == IGNORE_INDEX and packed.labels[1, 0].item() == IGNORE_INDEX


def test_pack_skips_and_names_an_overlong_sample():
    packed = pack([encoded("long", 9), encoded("ok", 4)], seq_len=8, pad_id=0)
    assert packed.skipped == ["long"] and packed.sample_ids == ["ok"]


def test_token_weights_make_a_weight_count_as_repetition():
    packed = pack([encoded("a", 6, weight=3.0), encoded("b", 4, weight=1.0)], seq_len=16, pad_id=0)
    w = packed.token_weights
    assert w.sum().item() == 4.0  # sum of sample weights
    assert torch.allclose(w[0, 1:6][w[0, 1:6] > 0], torch.tensor(1.0))  # 3 response tokens of weight 3/3


def test_assign_window_gives_each_rank_a_disjoint_balanced_share():
    costs = [9, 2, 5, 4]  # the loader docstring's example: 2 ranks, micro batch 2, one micro batch
    assert assign_global_batch(costs, 2, 2, 1) == [[[0, 1]], [[2, 3]]]


def test_stream_state_resumes_at_the_next_sample(shards):
    first = ShardStream(shards, seed=1)
    it = iter(first)
    seen = [next(it)["__key__"] for _ in range(7)]
    state = first.state_dict()
    rest = [next(it)["__key__"] for _ in range(30)]  # crosses a shard and an epoch boundary
    again = ShardStream(shards, seed=1)
    again.load_state_dict(state)
    it2 = iter(again)
    assert [next(it2)["__key__"] for _ in range(30)] == rest
    assert len(set(seen + rest[:17])) == 24  # the first epoch is every sample once


def test_judge_data_has_both_orders_in_both_modes(tokenizer_dir):
    from keye_model.processor import KeyeProcessor
    from keye_model.tokenizer import load_tokenizer
    from keye_model.training.examples import Example, judge_conversations

    example = Example(
        "p1",
        {
            "question": "What shape?",
            "task": "vqa",
            "meta": {
                "chosen": "circle",
                "rejected": "square",
                "reason": "correct-vs-wrong",
                "chosen_score": 5,
                "rejected_score": 1,
            },
        },
        [{"type": "text", "text": "What shape?"}],
    )
    convs = judge_conversations(example)
    assert [c[1]["content"] for c in convs] == ["A", "B", "A", "B"]
    assert "reasoning_content" not in convs[0][1] and "/no_think" in convs[0][0]["content"][-1]["text"]
    assert "Response B's answer is right" in convs[3][1]["reasoning_content"]
    processor = KeyeProcessor(load_tokenizer(tokenizer_dir))
    rendered = processor.tokenizer.decode(processor([convs[3]])["input_ids"][0])
    assert "<think>" in rendered and rendered.rstrip().endswith("B<|im_end|>")
