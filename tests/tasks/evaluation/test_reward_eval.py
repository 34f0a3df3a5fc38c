"""Held-out pairwise accuracy of the reward model: the pairs, the scoring rule, and a tiny trained judge."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import easy_vqa
import pytest
import webdataset as wds

from data_specs.presets import get_preset
from data_specs.stages import OptimizerSpec
from keye_model.tokenizer import tiny_tokenizer
from keye_model.training.runner import RunConfig, run_stage
from tasks.evaluation.answering import EvalModel
from tasks.evaluation.reward_eval import (
    EVAL_FILLER,
    PAIR_KINDS,
    evaluate_reward_pairs,
    judgments,
    pairwise_accuracy,
    reward_pairs,
)
from tasks.preference import FILLER, no_think_response


def test_pairs_come_from_the_test_split_in_both_kinds():
    pairs = reward_pairs(6, seed=3)
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    assert [p.kind for p in pairs] == list(PAIR_KINDS) * 3
    for p in pairs:
        i = int(p.id.rsplit("-", 1)[1])
        assert (p.question, p.image) == (questions[i], paths[image_ids[i]])
        assert p.better == no_think_response(answers[i]) and p.worse != p.better
        if p.kind == "length":  # both right, the worse one padded with held-out filler only
            assert p.worse.startswith(p.better) and len(p.worse) > len(p.better)
            assert any(f in p.worse for f in EVAL_FILLER) and not any(f in p.worse for f in FILLER)
    assert reward_pairs(6, seed=3) == pairs and reward_pairs(6, seed=4) != pairs
    assert not set(EVAL_FILLER) & set(FILLER)


def test_a_judge_that_always_says_one_letter_scores_one_half():
    asked = judgments(reward_pairs(10, seed=0))
    letters = [letter for *_, letter in asked]
    assert len(asked) == 20 and letters.count("A") == 10
    assert pairwise_accuracy(["A"] * 20, letters) == 0.5
    assert pairwise_accuracy(["B"] * 20, letters) == 0.5
    assert pairwise_accuracy(letters, letters) == 1.0
    assert pairwise_accuracy([None] * 20, letters) == 0.0  # unparseable counts as wrong
    with pytest.raises(ValueError, match="3 verdicts for 20"):
        pairwise_accuracy(["A"] * 3, letters)


def _train_pairs_shard(path: Path, num: int) -> str:
    """Judge training data from the easy-vqa TRAIN split: right answer over a wrong one, as the chain writes."""
    questions, answers, image_ids = easy_vqa.get_train_questions()
    images = easy_vqa.get_train_image_paths()
    with wds.TarWriter(str(path), mtime=0) as writer:
        for i in range(num):
            wrong = {"yes": "no", "no": "yes"}.get(answers[i], "circle" if answers[i] != "circle" else "triangle")
            record = {
                "id": f"pair-{i}",
                "source": "easy-vqa",
                "modality": "image",
                "task": "reasoning",
                "question": questions[i],
                "answer": no_think_response(answers[i]),
                "media_path": None,
                "tokens": 40,
                "meta": {
                    "chosen": no_think_response(answers[i]),
                    "rejected": no_think_response(wrong),
                    "reason": "reference-vs-wrong",
                },
            }
            writer.write(
                {
                    "__key__": f"pair-{i}",
                    "json": json.dumps(record).encode(),
                    "png": Path(images[image_ids[i]]).read_bytes(),
                }
            )
    return str(path)


@pytest.mark.slow
def test_a_tiny_judge_trained_by_sft_then_rl_is_scored_in_both_modes(tmp_path):
    tokenizer_dir = str(tmp_path / "tokenizer")
    tiny_tokenizer(tokenizer_dir)
    tiny = get_preset("tiny")
    shard = _train_pairs_shard(tmp_path / "pairs-000000.tar", 4)
    sft = dataclasses.replace(
        tiny.stage("reward"),
        num_steps=25,
        checkpoint_every=1000,
        optimizer=OptimizerSpec(lr=3e-3, warmup_steps=0, min_lr_ratio=1.0),
    )
    config = RunConfig(stage=sft, output_dir=str(tmp_path / "reward"), tokenizer_dir=tokenizer_dir, shards=(shard,))
    sft_checkpoint = run_stage(config).checkpoint_dir
    # RL from the SFT judge: the verdict reward fires (no_think prompts answered with a letter earn >= 0.5)
    rl = RunConfig(
        stage=dataclasses.replace(tiny.stage("reward_rl"), num_steps=2, checkpoint_every=1000),
        output_dir=str(tmp_path / "reward_rl"),
        tokenizer_dir=tokenizer_dir,
        shards=(shard,),
        init_checkpoint=sft_checkpoint,
    )
    rl_checkpoint = run_stage(rl).checkpoint_dir
    steps = [json.loads(line) for line in (Path(rl.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 2 and max(step["mean_reward"] for step in steps) > 0
    judge = EvalModel.load(rl_checkpoint, tokenizer_dir=tokenizer_dir, video_preset="tiny")
    metrics = evaluate_reward_pairs(judge, num_pairs=4, seed=0, max_new_tokens=48)
    assert metrics["reward/pairs"] == 4.0
    for mode in ("no_think", "think"):
        assert metrics[f"reward/accuracy_{mode}"] * 8 == round(metrics[f"reward/accuracy_{mode}"] * 8)
        assert {f"reward/accuracy_{mode}/{kind}" for kind in PAIR_KINDS} <= set(metrics)
    # Trained on letters, the judge answers every held-out no_think prompt with one: the evaluation asks in
    # the form the judge was trained on (a judge asked otherwise would say something unparseable).
    assert metrics["reward/unparseable_no_think"] == 0.0
