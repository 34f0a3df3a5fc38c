"""The top-level run's summary artifact and the per-run-folder artifact keys (Prefect keys are global)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from keye_model.training.run_config import StageResult
from tasks.evaluation.report import run_summary_markdown
from tasks.layout import RunLayout
from tasks.reports import artifact_key, run_slug
from tasks.train import training_minutes


def test_keys_are_prefect_safe_and_differ_per_run_folder(tmp_path):
    demo, other = tmp_path / "runs" / "Demo_1", tmp_path / "elsewhere" / "Demo_1"
    keys = {artifact_key("mix-annealing", demo), artifact_key("mix-annealing", other)}
    assert len(keys) == 2  # same folder name, other place: another key
    for key in keys:
        assert re.fullmatch(r"[a-z0-9-]+", key) and key.startswith("mix-annealing-demo-1-"), key
    assert artifact_key("stage-vision_expert", demo) == "stage-vision-expert-" + run_slug(demo)
    assert run_slug(demo) == run_slug(str(demo) + "/")  # one folder, one slug
    assert re.fullmatch(r"[0-9a-f]{6}", run_slug(tmp_path / "___"))  # nothing key-safe in the name


def test_summary_has_a_row_per_stage_with_metrics_checkpoint_and_report_link(tmp_path):
    run_dir = str(tmp_path / "run")
    evaluation = {
        "stage1": {"vqa/accuracy": 0.5, "vqa/ci95_low": 0.4, "vqa/ci95_high": 0.6, "probe/accuracy": 0.75},
        "sft": {"vqa/accuracy": 0.8125},
    }
    checkpoints = {"stage1": f"{run_dir}/stages/stage1/checkpoint", "sft": f"{run_dir}/stages/sft/checkpoint"}
    markdown = run_summary_markdown(run_dir, evaluation, checkpoints, minutes={"stage1": 0.25})
    lines = markdown.splitlines()
    assert lines[2] == "| stage | training min | probe/accuracy | vqa/accuracy | checkpoint | report |"
    stage1 = next(line for line in lines if line.startswith("| stage1 "))
    assert "| stage1 | 0.2 | 0.750 | 0.500 [0.400, 0.600] |" in stage1 and f"`{checkpoints['stage1']}`" in stage1
    assert f"(/artifacts/key/{artifact_key('stage-stage1', run_dir)})" in stage1
    sft = next(line for line in lines if line.startswith("| sft "))
    assert "| sft | - | n/a | 0.812 |" in sft  # a metric (or the minutes) the stage lacks reads n/a (-)
    assert "No stage" in run_summary_markdown(run_dir, {}, {})


def test_training_minutes_add_up_the_runners_time_in_the_order_stages_finished(tmp_path):
    layout = RunLayout(str(tmp_path / "run"))
    # finished in this order (result.json's finished_at), whatever their names, the preset's order or the
    # files' times (a copied run folder); stage1's result predates finished_at: its file's time counts
    finished = [
        ("stage1", 30.0, None),
        ("sft", 90.0, 2_000_010.0),
        ("gspo-r1", 6.0, 2_000_020.0),
        ("gspo", 12.0, 2_000_030.0),
    ]
    for when, (stage, wall_s, finished_at) in enumerate(finished):
        result = Path(layout.stage_dir(stage), "result.json")
        result.parent.mkdir(parents=True)
        written = StageResult(stage, str(result.parent / "checkpoint"), 4, 8, 80, 1.0, wall_s, finished_at).to_dict()
        if finished_at is None:
            del written["finished_at"]  # as a result.json of a runner that did not record it yet
        result.write_text(json.dumps(written))
        os.utime(result, (2_000_000 - when, 2_000_000 - when))  # mtimes in the reverse order
    Path(layout.stage_dir("unfinished")).mkdir()  # no result.json: not a finished stage
    assert training_minutes(layout) == pytest.approx({"stage1": 0.5, "sft": 2.0, "gspo-r1": 2.1, "gspo": 2.3})
    assert training_minutes(RunLayout(str(tmp_path / "empty"))) == {}


@pytest.mark.parametrize("kind", ["summary", "eval-comparison", "fallback-mpo"])
def test_every_kind_we_write_makes_a_valid_key(kind, tmp_path):
    assert re.fullmatch(r"[a-z0-9-]+", artifact_key(kind, tmp_path))
