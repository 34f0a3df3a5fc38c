"""The whole pipeline flow on the tiny preset under Prefect, checked through its lineage file."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from data_specs.presets import stages
from data_specs.stages import JUDGE_OBJECTIVES
from keye_model.model import KeyeForConditionalGeneration
from tasks.layout import RunLayout, read_mix_shards
from tasks.lineage import LineageStore

pytestmark = pytest.mark.slow
TRAINED = [s.name for s in stages("tiny")]


@pytest.fixture(scope="module")
def pipeline(prefect_harness, tmp_path_factory):
    from flows.keye import keye

    run_dir = tmp_path_factory.mktemp("keye-run")
    result = keye(run_dir=str(run_dir), records_per_source=8, review_mode="auto")
    return run_dir, result


def test_every_stage_ends_with_a_loadable_checkpoint_recorded_in_lineage(pipeline):
    run_dir, result = pipeline
    assert set(result["checkpoints"]) == set(TRAINED)
    with LineageStore(RunLayout(str(run_dir)).lineage_db, read_only=True) as store:
        for name in TRAINED:
            ckpt = result["checkpoints"][name]
            KeyeForConditionalGeneration.from_pretrained(ckpt)
            ancestry = store.ancestors(str(Path(ckpt).resolve()))
            kinds = {node.kind for node in ancestry}
            # Every checkpoint reaches back through shards and records to the sources it learned from.
            assert {"shard", "record", "source"} <= kinds, (name, kinds)


def test_fusion_method_and_weights_are_in_lineage(pipeline):
    run_dir, result = pipeline
    with LineageStore(RunLayout(str(run_dir)).lineage_db, read_only=True) as store:
        row = store.con.execute(
            "select metadata from artifacts where kind = 'checkpoint' and uri = ?",
            [str(Path(result["checkpoints"]["stage4"]).resolve())],
        ).fetchone()
    metadata = json.loads(row[0])
    assert metadata["fusion"]["method"] == "ties" and len(metadata["experts"]) == 2


def test_each_pretraining_mix_is_recorded_planned_and_realized(pipeline):
    run_dir, _ = pipeline
    with LineageStore(RunLayout(str(run_dir)).lineage_db, read_only=True) as store:
        for mix in ("image_text", "multitask", "annealing", "vision_expert", "sft"):
            report = store.mix(mix)
            by_modality = {line.modality: line for line in report.lines}
            assert by_modality, mix
            for line in by_modality.values():
                assert abs(line.realized_ratio_tokens - line.planned_ratio) <= 0.01, (mix, line)


def test_stage_metrics_and_evaluation_reach_lineage(pipeline):
    run_dir, result = pipeline
    assert set(result["evaluation"]) == set(TRAINED)
    with LineageStore(RunLayout(str(run_dir)).lineage_db, read_only=True) as store:
        losses = store.con.execute("select distinct stage from metrics where name = 'loss'").fetchall()
        evals = store.con.execute("select distinct stage from metrics where name = 'eval/vqa/accuracy'").fetchall()
        judged = store.con.execute(
            "select distinct stage from metrics where name = 'eval/reward/accuracy_no_think'"
        ).fetchall()
    rounds = {"gspo-r1", "coldstart-r2"}  # general RL's earlier rounds (tiny's GSPO has num_iterations=2)
    assert {row[0] for row in losses} - rounds == set(TRAINED) - {"stage4"}  # fusion trains nothing
    judges = {s.name for s in stages("tiny") if s.objective in JUDGE_OBJECTIVES}  # they judge, not answer
    assert judges and {row[0] for row in evals} == set(TRAINED) - judges
    assert {row[0] for row in judged} == judges


def test_a_failed_stage_reruns_while_finished_stages_are_skipped(pipeline):
    from flows.pretrain import pretrain

    run_dir, _ = pipeline
    layout = RunLayout(str(run_dir))
    stage1_result = Path(layout.stage_dir("stage1")) / "result.json"
    before = stage1_result.read_text()
    # Break stage 3 on purpose: clear it and hide its data.
    shutil.rmtree(layout.stage_dir("stage3"))
    annealing = Path(layout.shards_dir) / "annealing"
    hidden = annealing.with_name("annealing-hidden")
    annealing.rename(hidden)
    with pytest.raises(Exception, match="annealing"):
        pretrain(run_dir=str(run_dir), stages_to_run=["stage1", "stage2", "stage3"])
    hidden.rename(annealing)
    out = pretrain(run_dir=str(run_dir), stages_to_run=["stage1", "stage2", "stage3"])
    assert stage1_result.read_text() == before  # skipped: same result, not retrained
    assert json.loads((Path(layout.stage_dir("stage3")) / "result.json").read_text())["steps"] > 0
    assert out["stage3"].checkpoint_dir.endswith("stage3/checkpoint")
    assert read_mix_shards(layout.shards_dir, "annealing").paths


def test_fusion_keeps_the_annealed_rope_theta_through_post_training(pipeline):
    """Stage 3 resets RoPE theta to 8e6; the fused model keeps stage 3's config (FusionSpec.config_from),
    and every post-training stage starts from it."""
    from keye_model.config import KeyeConfig

    _, result = pipeline
    for name in ("stage3", "stage4", "sft", "alignment"):
        assert KeyeConfig.load(result["checkpoints"][name]).text.rope_theta == 8_000_000, name


def test_held_out_data_never_reaches_a_mix(pipeline):
    """No easy-vqa test image and no held-out scene video is the media of any curated record (lineage)."""
    import easy_vqa

    run_dir, _ = pipeline
    with LineageStore(RunLayout(str(run_dir)).lineage_db, read_only=True) as store:
        rows = store.con.execute("select metadata->>'$.media_path' from artifacts where kind = 'record'").fetchall()
    trained = {str(Path(row[0]).resolve()) for row in rows if row[0]}
    test_images = {str(Path(p).resolve()) for p in easy_vqa.get_test_image_paths().values()}
    held_out_file = Path(run_dir) / "eval" / "held_out_temporal.jsonl"
    held_out_videos = {
        str(Path(json.loads(line)["media_path"]).resolve()) for line in held_out_file.read_text().splitlines()
    }
    assert trained and test_images and held_out_videos
    assert not trained & test_images
    assert not trained & held_out_videos


def test_general_rl_rounds_end_in_the_gspo_stage_later_stages_start_from(pipeline):
    """tiny's GSPO stage has keye-8b's two rounds: GSPO as gspo-r1, rejection sampling judged by the reward
    model, cold-start again (coldstart-r2), prompts refiltered, GSPO again as gspo: alignment and the
    returned checkpoints get the last round; counts per round and each round's hint table are in lineage."""
    from data_specs.presets import get_preset
    from tasks.rl_rounds import count_lines
    from tasks.train import finished_result

    run_dir, result = pipeline
    layout = RunLayout(str(run_dir))
    assert get_preset("tiny").stage("gspo").rl.num_iterations == 2
    first, last = finished_result(layout.stage_dir("gspo-r1")), finished_result(layout.stage_dir("gspo"))
    assert first is not None and last is not None and first.checkpoint_dir != last.checkpoint_dir
    assert result["checkpoints"]["gspo"] == last.checkpoint_dir
    config = lambda stage: json.loads((Path(layout.stage_dir(stage)) / "run_config.json").read_text())  # noqa: E731
    assert config("alignment")["init_checkpoint"] == last.checkpoint_dir
    cold_set = Path(layout.posttrain_dir) / "longcot_records.jsonl"
    with LineageStore(layout.lineage_db, read_only=True) as store:
        counts = dict(
            store.con.execute(
                "select step || ' ' || name, value from metrics where stage = 'gspo' and name like 'rounds/%'"
            ).fetchall()
        )
        tables = store.con.execute("select distinct stage from metrics where name like 'gspo/all_wrong_L5'").fetchall()
        fallbacks = store.con.execute("select max(value) from metrics where name = 'fallbacks'").fetchone()[0]
    assert {"1 rounds/prompts_kept", "2 rounds/prompts_kept", "2 rounds/resampled", "2 rounds/replaced"} <= set(counts)
    assert counts["2 rounds/prompts_kept"] == count_lines(str(Path(layout.posttrain_dir) / "rl_prompts-r2.jsonl"))
    assert {"gspo-r1", "gspo"} <= {row[0] for row in tables}
    if count_lines(str(cold_set)):  # round 2's cold-start trained on the resampled set, and GSPO from it
        retrained = finished_result(layout.stage_dir("coldstart-r2"))
        assert retrained is not None and config("gspo")["init_checkpoint"] == retrained.checkpoint_dir
        assert counts["2 rounds/resampled"] == count_lines(str(cold_set)) >= counts["2 rounds/replaced"]
    else:  # no cold-start set to resample: counted as a fallback, GSPO starts again from the cold-start
        assert fallbacks >= 1 and config("gspo")["init_checkpoint"] == result["checkpoints"]["coldstart"]


def test_a_round_resamples_the_cold_start_set_and_trains_it_again(pipeline, tmp_path):
    """The round machinery on a cold-start set (tiny's LongCoT may keep none): in a new run folder, from the
    pipeline's checkpoints, GSPO round 1, rejection sampling judged by the reward model, coldstart-r2 on the
    updated set, refiltered prompts, and the last round as gspo, starting from coldstart-r2."""
    from prefect import flow

    from data_specs.longcot import read_jsonl, write_jsonl
    from data_specs.presets import get_preset
    from data_specs.schemas import Record
    from flows.posttrain import run_rl_rounds
    from tasks.rl_rounds import reward_stage_of
    from tasks.train import LaunchConfig, finished_checkpoints, finished_result

    run_dir, _ = pipeline
    source, layout = RunLayout(str(run_dir)), RunLayout(str(tmp_path / "rounds"))
    shutil.copytree(source.tokenizer_dir, layout.tokenizer_dir)
    shutil.copytree(Path(source.shards_dir) / "sft", Path(layout.shards_dir) / "sft")  # the cold-start set mixes it in
    Path(layout.posttrain_dir).mkdir(parents=True)
    for name in ("rl_candidates.jsonl", "rl_prompts.jsonl"):
        shutil.copy(Path(source.posttrain_dir) / name, Path(layout.posttrain_dir) / name)
    questions = [r for r in read_jsonl(source.records_path, Record) if r.source == "easy-vqa" and r.task == "vqa"]
    cold_set = [
        dataclasses.replace(
            r, id=f"{r.id}-cot", task="reasoning", answer=f"<think>\nI look at the shape.\n</think>\n\n{r.answer}"
        )
        for r in questions[:4]
    ]
    write_jsonl(cold_set, Path(layout.posttrain_dir) / "longcot_records.jsonl")
    preset = get_preset("tiny")
    checkpoints = finished_checkpoints(source, preset, "test")
    data = read_mix_shards(str(Path(source.posttrain_dir) / "shards"), "rl_prompts")
    fallbacks: list[str] = []

    gspo = preset.stage("gspo")
    two_rounds = dataclasses.replace(gspo, rl=dataclasses.replace(gspo.rl, num_iterations=2))

    @flow(name="rl-rounds-test")
    def rounds():
        return run_rl_rounds(two_rounds, layout, preset, LaunchConfig(), 0, checkpoints, data, (), fallbacks)

    last = rounds()
    retrained = finished_result(layout.stage_dir("coldstart-r2"))
    assert retrained is not None and last.checkpoint_dir == finished_result(layout.stage_dir("gspo")).checkpoint_dir
    config = json.loads((Path(layout.stage_dir("gspo")) / "run_config.json").read_text())
    assert config["init_checkpoint"] == retrained.checkpoint_dir
    updated = read_jsonl(Path(layout.posttrain_dir) / "longcot_records-r2.jsonl", Record)
    assert [r.id for r in updated] == [r.id for r in cold_set]
    replaced = sum("replaced_in_round" in r.meta for r in updated)
    trained_on = json.loads((Path(layout.stage_dir("coldstart-r2")) / "run_config.json").read_text())["shards"]
    assert trained_on == list(read_mix_shards(str(Path(layout.posttrain_dir) / "shards"), "longcot-r2").paths)
    # ... the resampled LongCoT records with SFT records mixed in (a third of the set: 2 beside 4)
    cold_r2 = read_jsonl(Path(layout.posttrain_dir) / "coldstart-r2.jsonl", Record)
    assert [r.id for r in cold_r2[:4]] == [r.id for r in updated]
    assert len(cold_r2) == 6 and all(r.meta.get("mixed_in_from") == "sft" for r in cold_r2[4:])
    assert not [note for note in fallbacks if "cold-start" in note]
    with LineageStore(layout.lineage_db, read_only=True) as store:
        counts = dict(store.con.execute("select name, value from metrics where stage = 'gspo' and step = 2").fetchall())
        ancestry = {node.artifact_id for node in store.ancestors(last.artifact_id)}
        first = store.con.execute(
            "select artifact_id from artifacts where kind = 'checkpoint' and uri = ?",
            [str(Path(finished_result(layout.stage_dir("gspo-r1")).checkpoint_dir).resolve())],
        ).fetchone()[0]
    assert counts["rounds/resampled"] == 4 and counts["rounds/replaced"] == replaced
    # the last round descends from round 1's RL model and from the judge, through the resampled set
    judge = reward_stage_of(gspo, preset.stages).name
    assert {first, checkpoints[judge].artifact_id} <= ancestry
