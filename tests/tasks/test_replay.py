"""keye replay: a stage chain trained through the pipeline's own functions is replayed from its lineage alone.

A run folder gets curated shards (recorded in its lineage file as curation does), then stage 1 and an
SFT-like stage that starts from it, each through ``stage_run_config`` -> ``train_stage`` ->
``record_stage_lineage``. ``keye replay`` of the SFT checkpoint into a new folder trains both again and
must produce the recorded ``model.safetensors`` sha256; a run folder whose shard was changed after it was
recorded is refused before anything trains.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

from data_specs.mixes import DataMix
from data_specs.presets import get_preset
from keye_cli.main import main
from keye_model.tokenizer import tiny_tokenizer
from tasks.layout import RunLayout, read_mix_shards
from tasks.lineage import Artifact, LineageStore
from tasks.replay import plan_replay, replay
from tasks.shards import ShardConfig, shard_stage
from tasks.sources import SourceSpec, collect_records
from tasks.train import CheckpointRef, finished_result, record_stage_lineage, stage_run_config, train_stage

pytestmark = pytest.mark.slow

STEPS = 2
SEED = 3


def specs():
    """Stage 1 and an SFT stage on top of it (the tiny preset's SFT starts from stage 4), two steps each."""
    preset = get_preset("tiny")
    stage1 = dataclasses.replace(next(s for s in preset.stages if s.name == "stage1"), num_steps=STEPS)
    sft = dataclasses.replace(next(s for s in preset.stages if s.name == "sft"), num_steps=STEPS, inputs=("stage1",))
    return preset, [stage1, sft]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder with shards, a tokenizer, stage1 and sft trained and recorded; returns the folder."""
    root = tmp_path_factory.mktemp("replay") / "run"
    layout = RunLayout(str(root))
    records = (
        collect_records(SourceSpec(name="easy-vqa", limit=6), root / "data").records
        + collect_records(SourceSpec(name="text-instructions", limit=6), root / "data").records
    )
    mix = DataMix(name="sft", modality_ratios={"image": 0.5, "text": 0.5}, tolerance=0.25)
    shard_stage(records, mix, ShardConfig(mix="sft", out_dir=layout.shards_dir, slow_fast="tiny"))
    data = read_mix_shards(layout.shards_dir, "sft")
    with LineageStore(layout.lineage_db) as store:
        store.record_artifacts(
            [Artifact(kind="shard", uri=p, sha256=s, created_by_run="curate") for p, s in zip(data.paths, data.sha256s)]
        )
    tiny_tokenizer(layout.tokenizer_dir)
    preset, stages = specs()
    checkpoints = {}
    for spec in stages:
        config, inputs = stage_run_config(spec, preset, layout, checkpoints, data, SEED)
        result = train_stage(config)
        artifact_id = record_stage_lineage(layout.lineage_db, result, "run-original", inputs)
        checkpoints[spec.name] = CheckpointRef(
            stage=spec.name, checkpoint_dir=result.checkpoint_dir, artifact_id=artifact_id
        )
    return root


def recorded_sha256(root: Path, stage: str) -> str:
    return json.loads((root / "stages" / stage / "result.json").read_text())["weights_sha256"]


def test_checkpoint_metadata_holds_a_relocatable_run_config(trained):
    with LineageStore(trained / "lineage.duckdb", read_only=True) as store:
        artifact_id = store.resolve(str(trained / "stages" / "sft" / "checkpoint"))
        metadata = json.loads(
            store.con.execute("SELECT metadata FROM artifacts WHERE artifact_id = ?", [artifact_id]).fetchone()[0]
        )
    config = metadata["run_config"]
    assert config["output_dir"] == "stages/sft"
    assert config["init_checkpoint"] == "stages/stage1/checkpoint"
    assert config["tokenizer_dir"] == "tokenizer"
    assert all(p.startswith("shards/sft/") for p in config["shards"]) and config["shards"]
    assert config["seed"] == SEED and config["stage"]["num_steps"] == STEPS
    assert set(metadata["tokenizer_sha256s"]) == {p.name for p in (trained / "tokenizer").iterdir() if p.is_file()}


def test_replay_reproduces_the_sft_checkpoint_bit_for_bit(trained, tmp_path, capsys):
    new = tmp_path / "new"
    checkpoint = str(trained / "stages" / "sft" / "checkpoint")
    plan = plan_replay(trained / "lineage.duckdb", checkpoint, new)
    assert [s.stage for s in plan] == ["stage1", "sft"] and not any(s.reuse for s in plan)

    code = main(["replay", checkpoint, "--db", str(trained / "lineage.duckdb"), "--run-dir", str(new)])
    out = capsys.readouterr().out
    assert code == 0, out
    for stage in ("stage1", "sft"):
        assert recorded_sha256(new, stage) == recorded_sha256(trained, stage), stage
        # the replay trained it (its own steps and shards in the new folder), not a copy of the weights
        assert finished_result(new / "stages" / stage).steps == STEPS
    assert "bit-identical" in out
    assert recorded_sha256(trained, "stage1") != recorded_sha256(trained, "sft")  # sft's steps changed weights
    for shard in (new / "shards" / "sft").glob("*.tar"):
        assert shard.read_bytes() == (trained / "shards" / "sft" / shard.name).read_bytes()

    # stage1 is now in the new folder with the recorded weights: a second replay of sft reuses it
    shutil.rmtree(new / "stages" / "sft")
    assert [s.reuse for s in plan_replay(trained / "lineage.duckdb", checkpoint, new)] == [True, False]


def test_replay_refuses_a_run_folder_whose_shard_changed(trained, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    shard = sorted((copy / "shards" / "sft").glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    new = tmp_path / "new"
    with pytest.raises(ValueError, match=re.escape(f"shard {shard} differs from lineage")):
        replay(copy / "lineage.duckdb", str(trained / "stages" / "sft" / "checkpoint"), new)
    assert not (new / "stages").exists()  # refused before any stage trained


def test_replay_cli_exits_2_naming_a_checkpoint_without_run_config(trained, tmp_path, capsys):
    db = tmp_path / "old.duckdb"
    with LineageStore(db) as store:
        store.record_artifacts(
            [Artifact(kind="checkpoint", uri="/old/run/stages/sft/checkpoint", sha256="ab", metadata={"stage": "sft"})]
        )
    code = main(["replay", "/old/run/stages/sft/checkpoint", "--db", str(db), "--run-dir", str(tmp_path / "new")])
    assert code == 2
    assert "recorded without its run config" in capsys.readouterr().err
