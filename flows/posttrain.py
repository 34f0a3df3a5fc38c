"""The posttrain flow: SFT -> LongCoT data (five steps, from the SFT model) -> MPO -> reward model ->
LongCoT cold-start -> GSPO (progressive hints; prompts filtered by pass rate) -> alignment RL.

A GSPO stage with ``RLSpec.num_iterations`` = N > 1 runs as N rounds (``run_rl_rounds``): GSPO
(``gspo-r1``), rejection sampling of the cold-start set by the RL model judged by the reward model,
cold-start again (``coldstart-r2``), prompts refiltered by that model, GSPO again; the last round
trains under the stage's own name, so ``gspo`` means the last round's model to every later reader.

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
from data_specs.presets import Preset, as_preset
from data_specs.stages import StageSpec
from flows.pretrain import run_training_stage, selected
from tasks.chain_report import record_chain_metrics_task
from tasks.generation import GeneratorConfig
from tasks.layout import MixShards, RunLayout, read_mix_shards
from tasks.lineage.prefect_tasks import record_run_end, record_run_start
from tasks.longcot import assess_quality_task, collect_problems_task, generate_paths_task, score_samples_task
from tasks.posttrain_data import (
    cot_records_task,
    mix_in_task,
    pair_records_task,
    rl_prompt_records_task,
    write_generated_shards_task,
)
from tasks.posttrain_steps import (
    apply_review_task,
    filter_rl_prompts_task,
    load_samples_task,
    nonempty,
    record_fallbacks_task,
    record_generated_lineage_task,
    record_reviews_task,
)
from tasks.preference import build_preference_pairs_task, build_reward_anneal_pairs_task, build_reward_pairs_task
from tasks.reports import artifact_key
from tasks.review import request_review
from tasks.rl_rounds import (
    count_lines,
    hint_table,
    record_round_task,
    rejection_sample_task,
    reward_stage_of,
    round_name,
    round_stage,
)
from tasks.train import CheckpointRef, LaunchConfig, finished_checkpoints, prepare_tokenizer


def cold_start_set(
    layout: RunLayout, preset: Preset, pool_mix: str, records_path: str, out_path: str, seed: int
) -> tuple[str, tuple[str, ...]]:
    """The cold-start set: the LongCoT records in ``records_path`` with ``preset.longcot_mix_in_share`` of
    records drawn from ``pool_mix``, the mix the generating (SFT) model trained on (``mix_in_task``);
    returns its file and the ids of the shards it drew from (its lineage parents besides the model that
    wrote the LongCoT samples)."""
    pool = read_mix_shards(layout.shards_dir, pool_mix)
    mixed = mix_in_task(records_path, list(pool.paths), preset.longcot_mix_in_share, pool_mix, out_path, seed)
    return mixed, pool.artifact_ids if preset.longcot_mix_in_share else ()


def make_generated_data(
    layout: RunLayout,
    generator_stage: StageSpec,
    checkpoint: CheckpointRef,
    preset: Preset,
    review_mode: str,
    review_timeout_s: int,
    seed: int,
    fallbacks: list[str],
) -> dict[str, dict]:
    """LongCoT samples, preference pairs and RL prompts from ``checkpoint``, the model of ``generator_stage``
    (the stages' ``data_from``: SFT), sharded, with lineage.

    Returns the lineage of each generated mix that has data; a mix left empty is named in ``fallbacks``.
    """
    out = Path(layout.posttrain_dir)
    shards_dir = str(out / "shards")
    run_id = str(flow_run.id)
    config = LongCoTConfig(
        num_paths=preset.longcot_paths,
        max_problems=preset.longcot_problems,
        max_new_tokens=preset.max_new_tokens,
        seed=seed,
    )
    generator = GeneratorConfig(kind="transformers", model_dir=checkpoint.checkpoint_dir)
    problems = collect_problems_task(layout.records_path, str(out / "problems.jsonl"), config)
    paths = generate_paths_task(problems, str(out / "paths.jsonl"), generator, config)
    assessed, rejects = assess_quality_task(
        problems, paths, str(out / "assessed.jsonl"), str(out / "assessed_rejects.jsonl"), config
    )
    samples = load_samples_task(assessed)
    decisions = request_review(samples, mode=review_mode, timeout_s=review_timeout_s)
    record_reviews_task(layout.lineage_db, run_id, decisions)
    kept, review_rejects = apply_review_task(
        samples, decisions, str(out / "reviewed.jsonl"), str(out / "review_rejects.jsonl")
    )
    scored = score_samples_task(kept, str(out / "cot_samples.jsonl"), config)
    pairs = build_preference_pairs_task([scored, rejects, review_rejects], str(out / "pairs.jsonl"), PreferenceConfig())
    judged, num_answer_pairs = build_reward_pairs_task(
        pairs, layout.records_path, str(out / "reward_pairs.jsonl"), preset.reward_answer_pairs, seed
    )
    if preset.reward_answer_pairs and not num_answer_pairs:
        fallbacks.append("reward_pairs: no curated record made an answer pair; the reward model has MPO's pairs only")
    anneal = build_reward_anneal_pairs_task(judged, str(out / "reward_anneal_pairs.jsonl"), seed)
    data: dict[str, dict] = {}
    rl_candidates = rl_prompt_records_task(
        layout.records_path, str(out / "rl_candidates.jsonl"), limit=preset.rl_candidates, seed=seed
    )
    rl_kept, rl_fallback = filter_rl_prompts_task(
        checkpoint.checkpoint_dir,
        rl_candidates,
        str(out / "rl_prompts.jsonl"),
        max_prompts=preset.rl_candidates,
        max_new_tokens=preset.max_new_tokens,
        seed=seed,
    )
    if rl_fallback:
        fallbacks.append("rl_prompts: no prompt had a pass rate strictly between 0 and 1; all were kept")
    cold_start, mixed_in_from = cold_start_set(
        layout,
        preset,
        generator_stage.data_mix,
        cot_records_task(scored, str(out / "longcot_records.jsonl")),
        str(out / "coldstart.jsonl"),
        seed,
    )
    for name, records, mixed_in in (
        ("longcot", cold_start, mixed_in_from),
        ("preference", pair_records_task(pairs, str(out / "preference_records.jsonl")), ()),
        ("reward_pairs", pair_records_task(judged, str(out / "reward_pairs_records.jsonl")), ()),
        ("reward_anneal", pair_records_task(anneal, str(out / "reward_anneal_records.jsonl")), ()),
        ("rl_prompts", rl_kept, ()),
    ):
        if nonempty(records):
            write_generated_shards_task(records, name, shards_dir, preset.slow_fast)
            parents = [checkpoint.artifact_id, *mixed_in]
            data[name] = record_generated_lineage_task(layout.lineage_db, run_id, parents, records, shards_dir, name)
    return data


def run_rl_rounds(
    spec: StageSpec,
    layout: RunLayout,
    preset: Preset,
    launch: LaunchConfig,
    seed: int,
    checkpoints: dict[str, CheckpointRef],
    data: MixShards,
    extra: tuple[str, ...],
    fallbacks: list[str],
) -> CheckpointRef:
    """GSPO stage ``spec`` as ``spec.rl.num_iterations`` rounds of general RL (``tasks.rl_rounds``); returns
    the last round's checkpoint, trained under the stage's own name. Round 1 trains on ``data``; between
    rounds: (2) ``rejection_sample_task`` on the LongCoT records, the reward model judging; (3) the
    cold-start stage (``spec.inputs[0]``) trains again on them, with the same SFT records mixed in
    (``cold_start_set``); (4) that model refilters the RL prompt candidates by pass rate. Intermediate
    stages are not added to ``checkpoints``.
    """
    log = get_run_logger()
    out, run_id, num_rounds = Path(layout.posttrain_dir), str(flow_run.id), spec.rl.num_iterations
    shards_dir = str(out / "shards")
    cold, judge = preset.stage(spec.inputs[0]), reward_stage_of(spec, preset.stages)
    if judge.name not in checkpoints:
        raise ValueError(
            f"stage {spec.name}: RL round 2 needs the reward model of stage {judge.name}, which has not "
            f"finished in {layout.root} (run it first: --stages {judge.name} {spec.name})"
        )
    rounds = dict(checkpoints)
    cot_path, candidates = str(out / "longcot_records.jsonl"), str(out / "rl_candidates.jsonl")
    first = round_stage(spec, round_name(spec.name, 1), spec.inputs)
    latest = run_training_stage(first, layout, preset, launch, seed, rounds, data, extra)
    counts = {"prompts": count_lines(candidates), "prompts_kept": count_lines(str(out / "rl_prompts.jsonl"))}
    record_round_task(layout.lineage_db, run_id, spec.name, 1, counts)
    log.info("RL round 1 of %d: %s; hint table %s", num_rounds, counts, hint_table(layout.stage_dir(first.name)))
    for r in range(2, num_rounds + 1):
        counts = {"resampled": 0, "wrong": 0, "replaced": 0}
        cold_r = round_stage(cold, round_name(cold.name, r), cold.inputs)
        if nonempty(cot_path):
            cot_path, resampling = rejection_sample_task(
                latest.checkpoint_dir,
                rounds[judge.name].checkpoint_dir,
                cot_path,
                str(out / f"longcot_records-r{r}.jsonl"),
                r,
                max_new_tokens=preset.max_new_tokens,
                seed=seed,
            )
            counts.update(resampling)
            mix = round_name(cold.data_mix, r)
            pool_mix = preset.stage(cold.data_from).data_mix
            cold_set, mixed_in = cold_start_set(
                layout, preset, pool_mix, cot_path, str(out / f"coldstart-r{r}.jsonl"), seed
            )
            write_generated_shards_task(cold_set, mix, shards_dir, preset.slow_fast)
            parents = [latest.artifact_id, rounds[judge.name].artifact_id, *mixed_in]
            made = record_generated_lineage_task(layout.lineage_db, run_id, parents, cold_set, shards_dir, mix)
            rounds[cold_r.name] = run_training_stage(
                cold_r, layout, preset, launch, seed, rounds, read_mix_shards(shards_dir, mix), tuple(made["dataset"])
            )
        else:
            note = f"RL round {r}: no cold-start set to resample; {cold.name} is not retrained"
            log.warning(note)
            fallbacks.append(note)
            rounds[cold_r.name] = rounds[cold.name]
        kept, fell_back = filter_rl_prompts_task(
            rounds[cold_r.name].checkpoint_dir,
            candidates,
            str(out / f"rl_prompts-r{r}.jsonl"),
            max_prompts=preset.rl_candidates,
            max_new_tokens=preset.max_new_tokens,
            seed=seed + r,
        )
        if fell_back:
            fallbacks.append(f"RL round {r}: no prompt had a pass rate strictly between 0 and 1; all were kept")
        mix = round_name(spec.data_mix, r)
        write_generated_shards_task(kept, mix, shards_dir, preset.slow_fast)
        made = record_generated_lineage_task(
            layout.lineage_db, run_id, [rounds[cold_r.name].artifact_id], kept, shards_dir, mix
        )
        name = spec.name if r == num_rounds else round_name(spec.name, r)
        rl_r = round_stage(spec, name, (cold_r.name, *spec.inputs[1:]))
        latest = run_training_stage(
            rl_r, layout, preset, launch, seed, rounds, read_mix_shards(shards_dir, mix), tuple(made["dataset"])
        )
        rounds[rl_r.name] = latest
        counts.update(prompts=count_lines(candidates), prompts_kept=count_lines(kept))
        record_round_task(layout.lineage_db, run_id, spec.name, r, counts)
        log.info("RL round %d of %d: %s; hint table %s", r, num_rounds, counts, hint_table(layout.stage_dir(name)))
    return latest


@flow(name="posttrain")
def posttrain(
    run_dir: str,
    preset: Preset | str = "tiny",
    stages_to_run: list[str] | None = None,
    review_mode: str = "auto",
    review_timeout_s: int = 3600,
    launcher: str = "inprocess",
    num_processes: int = 1,
    gpu_limit: str | None = None,
    seed: int = 0,
) -> dict[str, CheckpointRef]:
    """Post-training stages of ``preset``, each from the checkpoints its ``StageSpec.inputs`` name, in
    ``run_dir`` (a folder with curated data and the stages they start from: no default).

    The stages whose mix the chain generates (``StageSpec.data_from``) get it from one pass over the
    generating stage's model, made when the first of them runs. A stage whose generated mix came out empty
    trains on the generating stage's own mix instead; each such fallback is logged, shown as a UI note and
    counted in the run's ``fallbacks`` metric.
    """
    preset = as_preset(preset)
    log = get_run_logger()
    layout = RunLayout(run_dir)
    record_run_start(layout.lineage_db)
    prepare_tokenizer(layout.tokenizer_dir, preset.tokenizer_dir)
    launch = LaunchConfig(launcher=launcher, num_processes=num_processes, gpu_limit=gpu_limit)
    checkpoints = finished_checkpoints(layout, preset, str(flow_run.id))
    generated: dict[str, dict] | None = None
    fallbacks: list[str] = []
    shards_dir = str(Path(layout.posttrain_dir) / "shards")
    for spec in selected("posttrain", preset, stages_to_run):
        data, extra = None, ()
        if spec.data_from is not None:
            generator = preset.stage(spec.data_from)
            if generated is None:
                if generator.name not in checkpoints:
                    raise ValueError(
                        f"stage {spec.name} trains on data generated by the {generator.name} model; no finished "
                        f"{generator.name} stage in {layout.root} (run it first: --stages {generator.name} {spec.name})"
                    )
                made_by = checkpoints[generator.name]
                generated = make_generated_data(
                    layout, generator, made_by, preset, review_mode, review_timeout_s, seed, fallbacks
                )
            if spec.data_mix in generated:
                data = read_mix_shards(shards_dir, spec.data_mix)
                extra = tuple(generated[spec.data_mix]["dataset"])
            else:
                note = (
                    f"stage {spec.name}: the chain generated no {spec.data_mix} data; "
                    f"it trained on the {generator.data_mix} mix"
                )
                log.warning(note)
                fallbacks.append(note)
                create_markdown_artifact(f"Fallback: {note}.", key=artifact_key(f"fallback-{spec.name}", run_dir))
                data = read_mix_shards(layout.shards_dir, generator.data_mix)
        else:
            data = read_mix_shards(layout.shards_dir, spec.data_mix)
        if spec.rl is not None and spec.rl.num_iterations > 1:
            checkpoints[spec.name] = run_rl_rounds(
                spec, layout, preset, launch, seed, checkpoints, data, extra, fallbacks
            )
            continue
        checkpoints[spec.name] = run_training_stage(spec, layout, preset, launch, seed, checkpoints, data, extra)
        if spec.rl is not None:
            log.info("stage %s hint table: %s", spec.name, hint_table(layout.stage_dir(spec.name)))
    record_fallbacks_task(layout.lineage_db, str(flow_run.id), fallbacks)
    if generated is not None:
        record_chain_metrics_task(layout.lineage_db, str(flow_run.id), layout.posttrain_dir)
    record_run_end(layout.lineage_db)
    return checkpoints
