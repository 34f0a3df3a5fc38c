"""The whole pipeline flow on the tiny preset under Prefect, checked through its lineage file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from data_specs.presets import stages
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
    assert {row[0] for row in losses} == set(TRAINED) - {"stage4"}  # fusion trains nothing
    assert {row[0] for row in evals} == set(TRAINED)


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
