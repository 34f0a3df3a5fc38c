"""What each stage's checkpoint is asked at evaluation follows its spec, never its name."""

from __future__ import annotations

import dataclasses

from data_specs.presets import get_preset
from data_specs.stages import JUDGE_OBJECTIVES, VISION_OBJECTIVES
from flows.evaluate import stage_eval_config
from tasks.evaluation.run import EvalConfig


def test_judges_only_judge_policies_answer_and_post_training_follows_instructions():
    preset = get_preset("demo-long")  # the demo's stages and vision pre-training
    base = EvalConfig(vqa_samples=1000, temporal_jsonl="t.jsonl", caption_images=200, alignment_prompts=64)
    assert any(spec.objective in VISION_OBJECTIVES for spec in preset.stages)
    for spec in preset.stages:
        config = stage_eval_config(spec, preset, base)
        if spec.objective in VISION_OBJECTIVES:
            assert config.probe_set == base.probe_set and config.temporal_jsonl is None
            asked = (config.vqa_samples, config.caption_images, config.alignment_prompts, config.reward_pairs)
            assert asked == (0, 0, 0, 0)
        elif spec.objective in JUDGE_OBJECTIVES:
            assert config.reward_pairs == preset.eval_reward_pairs > 0
            assert (config.vqa_samples, config.caption_images, config.alignment_prompts) == (0, 0, 0)
            assert config.temporal_jsonl is None and config.probe_set is None
        else:
            assert config.vqa_samples == 1000 and config.caption_images == 200 and config.reward_pairs == 0
            assert config.alignment_prompts == (64 if spec.phase == "posttrain" else 0)
    # a policy stage that a later stage names as its reward model judges pairs too
    sft = preset.stage("sft")
    uses_sft = dataclasses.replace(
        preset, stages=(*preset.stages[:-1], dataclasses.replace(preset.stages[-1], reward_model="sft"))
    )
    assert stage_eval_config(sft, uses_sft, base).reward_pairs == preset.eval_reward_pairs
    assert stage_eval_config(sft, uses_sft, base).vqa_samples == 1000
