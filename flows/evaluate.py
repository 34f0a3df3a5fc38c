"""The evaluate flow: every finished stage's checkpoint on held-out data only: VQA (easy-vqa test split),
caption loss (easy-vqa test images), instruction compliance (held-out alignment prompts), temporal
localization (scene videos rendered with a held-out seed), the ViT probe, pairwise judging accuracy for
reward-model checkpoints and, when given local data in its format, Video-MME; metrics to lineage and
one UI table comparing the stages."""

from __future__ import annotations

import dataclasses

from prefect import flow
from prefect.runtime import flow_run

from data_specs.presets import Preset, as_preset
from data_specs.stages import JUDGE_OBJECTIVES, VISION_OBJECTIVES, StageSpec
from tasks.evaluation.heldout import held_out_scene_videos_task
from tasks.evaluation.report import publish_comparison_task, record_eval_metrics_task
from tasks.evaluation.run import EvalConfig, evaluate_checkpoint_task
from tasks.layout import RunLayout
from tasks.lineage.prefect_tasks import record_run_end, record_run_start
from tasks.reports import artifact_key
from tasks.train import finished_result


def stage_eval_config(spec: StageSpec, preset: Preset, config: EvalConfig) -> EvalConfig:
    """What one stage's checkpoint is asked, from its spec: a pairwise judge (a judge objective) only
    judges the held-out pairs (it is not a policy: asked a question it writes a verdict); a policy is
    asked everything, instruction following from post-training on (pre-trained models are not taught
    to follow instructions), and judges pairs too when a later stage uses it as its reward model. Vision
    pre-training gets the ViT probe alone."""
    used_as_judge = any(s.reward_model == spec.name for s in preset.stages)
    pairs = preset.eval_reward_pairs if spec.objective in JUDGE_OBJECTIVES or used_as_judge else 0
    if spec.objective in JUDGE_OBJECTIVES + VISION_OBJECTIVES:  # neither answers questions
        return dataclasses.replace(
            config,
            vqa_samples=0,
            temporal_jsonl=None,
            videomme_json=None,
            videomme_video_dir=None,
            probe_set=config.probe_set if spec.objective in VISION_OBJECTIVES else None,
            caption_images=0,
            alignment_prompts=0,
            reward_pairs=pairs,
        )
    alignment = config.alignment_prompts if spec.phase == "posttrain" else 0
    return dataclasses.replace(config, alignment_prompts=alignment, reward_pairs=pairs)


@flow(name="evaluate")
def evaluate(
    run_dir: str,
    preset: Preset | str = "tiny",
    stages_to_eval: list[str] | None = None,
    vqa_samples: int | None = None,
    videomme_json: str | None = None,
    videomme_video_dir: str | None = None,
    max_new_tokens: int | None = None,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Metrics of each finished stage (or of ``stages_to_eval``), in pipeline order; ``vqa_samples``
    defaults to the preset's evaluation size. Temporal localization is scored on scene videos rendered
    with a held-out seed (``tasks.evaluation.heldout``), never on the curated ones the stages trained on."""
    preset = as_preset(preset)
    layout = RunLayout(run_dir)
    record_run_start(layout.lineage_db)
    temporal = held_out_scene_videos_task(
        str(layout.root / "eval"), preset.eval_temporal_videos, seed, preset.max_side_px
    )
    config = EvalConfig(
        vqa_samples=vqa_samples or preset.eval_vqa_samples,
        temporal_jsonl=temporal,
        videomme_json=videomme_json,
        videomme_video_dir=videomme_video_dir,
        # Room for a reasoning block: after LongCoT cold-start the model thinks before it answers.
        max_new_tokens=max_new_tokens or preset.max_new_tokens,
        tokenizer_dir=layout.tokenizer_dir,
        video_preset=preset.slow_fast,
        caption_images=preset.eval_caption_images,
        alignment_prompts=preset.eval_alignment_prompts,
    )
    results: dict[str, dict[str, float]] = {}
    for spec in preset.stages:
        if stages_to_eval and spec.name not in stages_to_eval:
            continue
        done = finished_result(layout.stage_dir(spec.name))
        if done is None:
            continue
        metrics = evaluate_checkpoint_task.with_options(task_run_name=f"evaluate-{spec.name}")(
            done.checkpoint_dir, stage_eval_config(spec, preset, config)
        )
        if not metrics:  # e.g. a judge stage in a preset that judges no pairs
            continue
        record_eval_metrics_task(layout.lineage_db, str(flow_run.id), spec.name, done.checkpoint_dir, metrics)
        results[spec.name] = metrics
    if results:
        publish_comparison_task(list(results.items()), key=artifact_key("eval-comparison", run_dir))
    record_run_end(layout.lineage_db)
    return results
