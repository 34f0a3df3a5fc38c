"""The posttrain flow: SFT -> LongCoT data (five steps, from the SFT model) -> MPO -> reward model ->
LongCoT cold-start -> GSPO (progressive hints; prompts filtered by pass rate) -> alignment RL.

The data the chain trains on after SFT is made inside it, from its own latest checkpoint, each step a
visible task with lineage edges back to that checkpoint. Human review pauses the run (``review_mode``
``ui``) until a person answers the form in the UI or ``keye review answer``; ``auto`` applies the
stated policy and lineage records the decisions as automatic.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from data_specs.longcot import LongCoTConfig, PreferenceConfig
from tasks.generation import GeneratorConfig
from tasks.layout import RunLayout, read_mix_shards
from tasks.lineage.prefect_tasks import record_run_end, record_run_start
from tasks.longcot import assess_quality_task, collect_problems_task, generate_paths_task, score_samples_task
from tasks.posttrain_data import (
    cot_records_task, pair_records_task, rl_prompt_records_task, write_generated_shards_task,
)
from tasks.posttrain_steps import (
    apply_review_task, filter_rl_prompts_task, load_samples_task, nonempty, record_generated_lineage_task,
    record_reviews_task,
)
from tasks.preference import build_preference_pairs_task
from tasks.review import request_review
from tasks.train import LaunchConfig, prepare_tokenizer

from flows.pretrain import finished_checkpoints, run_training_stage, selected


def make_generated_data(layout: RunLayout, sft: dict, preset: str, review_mode: str, review_timeout_s: int,
                        seed: int) -> dict[str, dict]:
    """LongCoT samples, preference pairs and RL prompts from the SFT checkpoint, sharded, with lineage."""
    out = Path(layout.posttrain_dir)
    shards_dir = str(out / "shards")
    run_id = str(flow_run.id)
    tiny = preset == "tiny"
    config = LongCoTConfig(num_paths=4, max_new_tokens=48 if tiny else 4096, seed=seed)
    generator = GeneratorConfig(kind="transformers", model_dir=sft["checkpoint_dir"])
    problems = collect_problems_task(layout.records_path, str(out / "problems.jsonl"), config)
    paths = generate_paths_task(problems, str(out / "paths.jsonl"), generator, config)
    assessed, rejects = assess_quality_task(problems, paths, str(out / "assessed.jsonl"),
                                            str(out / "assessed_rejects.jsonl"), config)
    samples = load_samples_task(assessed)
    decisions = request_review(samples, mode=review_mode, timeout_s=review_timeout_s)
    record_reviews_task(layout.lineage_db, run_id, decisions)
    kept, review_rejects = apply_review_task(samples, decisions, str(out / "reviewed.jsonl"),
                                             str(out / "review_rejects.jsonl"))
    scored = score_samples_task(kept, str(out / "cot_samples.jsonl"), config)
    pairs = build_preference_pairs_task([scored, rejects, review_rejects], str(out / "pairs.jsonl"),
                                        PreferenceConfig())
    parents = [sft["artifact_id"]]
    data: dict[str, dict] = {}
    for name, items, to_records in (("longcot", scored, cot_records_task), ("preference", pairs, pair_records_task)):
        records = to_records(items, str(out / f"{name}_records.jsonl"))
        if nonempty(records):
            write_generated_shards_task(records, name, shards_dir, "tiny" if tiny else "default")
            data[name] = record_generated_lineage_task(layout.lineage_db, run_id, parents, records, shards_dir, name)
    rl_records = rl_prompt_records_task(layout.records_path, str(out / "rl_candidates.jsonl"))
    rl_kept = filter_rl_prompts_task(sft["checkpoint_dir"], rl_records, str(out / "rl_prompts.jsonl"), seed=seed)
    write_generated_shards_task(rl_kept, "rl_prompts", shards_dir, "tiny" if tiny else "default")
    data["rl_prompts"] = record_generated_lineage_task(layout.lineage_db, run_id, parents, rl_kept, shards_dir,
                                                       "rl_prompts")
    return data


@flow(name="posttrain")
def posttrain(run_dir: str = "runs/demo", preset: str = "tiny", stages_to_run: list[str] | None = None,
              review_mode: str = "auto", review_timeout_s: int = 3600, launcher: str = "inprocess",
              num_processes: int = 1, gpu_limit: str | None = None, seed: int = 0) -> dict[str, dict]:
    """Post-training stages of ``preset``, starting from pre-training's fused checkpoint (stage4)."""
    log = get_run_logger()
    layout = RunLayout(run_dir)
    record_run_start(layout.lineage_db)
    prepare_tokenizer(layout.tokenizer_dir, preset)
    launch = LaunchConfig(launcher=launcher, num_processes=num_processes, gpu_limit=gpu_limit)
    checkpoints = finished_checkpoints(layout, preset, str(flow_run.id))
    if "stage4" not in checkpoints:
        raise ValueError(f"post-training starts from stage4's checkpoint; none in {layout.stage_dir('stage4')} "
                         "(run the pretrain flow first)")
    generated: dict[str, dict] = {}
    shards_dir = str(Path(layout.posttrain_dir) / "shards")
    for spec in selected("posttrain", preset, stages_to_run):
        mix_name = {"preference": "preference", "longcot": "longcot", "rl": "rl_prompts"}.get(spec.data_mix)
        shards, extra = None, ()
        if mix_name is not None:
            if not generated and "sft" in checkpoints:
                generated = make_generated_data(layout, checkpoints["sft"], preset, review_mode, review_timeout_s, seed)
            if mix_name in generated:
                shards = read_mix_shards(shards_dir, mix_name)
                extra = tuple(generated[mix_name]["dataset"])
            else:
                log.warning("stage %s: the chain generated no %s data; it trains on the sft mix instead",
                            spec.name, mix_name)
                create_markdown_artifact(f"Stage `{spec.name}` had no generated `{mix_name}` data and trained on "
                                         "the `sft` mix instead.", key=f"fallback-{spec.name}")
                shards = read_mix_shards(layout.shards_dir, "sft")
        reward_model = checkpoints.get("reward", {}).get("checkpoint_dir") if spec.name == "alignment" else None
        checkpoints[spec.name] = run_training_stage(spec, layout, preset, launch, seed, checkpoints,
                                                    extra_inputs=extra, shards=shards, reward_model=reward_model)
    record_run_end(layout.lineage_db)
    return checkpoints
