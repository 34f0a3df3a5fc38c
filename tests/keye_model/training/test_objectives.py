"""The objective registry: every objective runs through the one runner, and every one that trains can
overfit a small fixed batch (its loss falls well below where it started)."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image
from skimage import data

from data_specs.presets import get_preset
from data_specs.stages import OBJECTIVES, OptimizerSpec
from keye_model.model import KeyeForConditionalGeneration
from keye_model.training.objectives import REGISTRY, get_objective
from keye_model.training.runner import RunConfig, run_stage

pytestmark = pytest.mark.slow


def test_registry_and_stage_spec_names_agree():
    assert set(REGISTRY) == set(OBJECTIVES)
    with pytest.raises(ValueError, match="unknown objective 'dpo'"):
        get_objective("dpo")


def _one_stage_per_objective() -> dict[str, str]:
    stages: dict[str, str] = {}
    for spec in get_preset("tiny").stages:
        stages.setdefault(spec.objective, spec.name)
    return stages


@pytest.fixture(scope="module")
def fixed_shard(tmp_path_factory) -> str:
    """Two samples, always the same batch: a VQA question on a photograph and a text instruction, each
    with a preference pair, a replay weight and RL hints."""
    path = tmp_path_factory.mktemp("fixed") / "fixed-000000.tar"
    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).convert("RGB").resize((56, 56)).save(buf, "PNG")
    rows = [("q0", "image", "What is in the picture?", "an astronaut"), ("q1", "text", "Name a colour.", "red")]
    with wds.TarWriter(str(path), mtime=0) as writer:
        for key, modality, question, answer in rows:
            record = {
                "id": key,
                "source": "test",
                "modality": modality,
                "task": "vqa",
                "question": question,
                "answer": answer,
                "media_path": None,
                "tokens": 12,
                "meta": {
                    "chosen": answer,
                    "rejected": "I do not know.",
                    "replay_weight": 2.0,
                    "hints": ["Look closely."],
                },
            }
            sample = {"__key__": key, "json": json.dumps(record).encode()}
            if modality == "image":
                sample["png"] = buf.getvalue()
            writer.write(sample)
    return str(path)


def _config(tmp_path: Path, stage_name: str, tokenizer_dir: str, shard: str, **changes) -> RunConfig:
    spec = dataclasses.replace(get_preset("tiny").stage(stage_name), **changes)
    return RunConfig(
        stage=spec, output_dir=str(tmp_path / stage_name), tokenizer_dir=tokenizer_dir, shards=(shard,), seed=1
    )


def _losses(config: RunConfig) -> list[float]:
    path = Path(config.output_dir) / "metrics.jsonl"
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("objective", sorted(set(OBJECTIVES) - {"fusion"}))
def test_every_training_objective_runs_one_step(objective, tmp_path, tokenizer_dir, fixed_shard):
    stage_name = _one_stage_per_objective()[objective]
    judge = None
    if get_preset("tiny").stage(stage_name).reward_model:
        judge = run_stage(_config(tmp_path, "reward", tokenizer_dir, fixed_shard, num_steps=1)).checkpoint_dir
    config = dataclasses.replace(
        _config(tmp_path, stage_name, tokenizer_dir, fixed_shard, num_steps=1), reward_model_checkpoint=judge
    )
    result = run_stage(config)
    metrics = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert result.steps == 1 and len(metrics) == 1 and math.isfinite(metrics[0]["loss"])
    if objective == "mpo":
        assert {"preference_loss", "quality_loss", "generation_loss", "bco_delta"} <= set(metrics[0])
    KeyeForConditionalGeneration.from_pretrained(result.checkpoint_dir)


def test_fusion_is_the_objective_that_does_not_train():
    assert [name for name, cls in REGISTRY.items() if not cls.trains] == ["fusion"]


@pytest.mark.parametrize("objective", ["lm", "weighted_lm", "reward", "mpo"])
def test_objective_overfits_a_fixed_batch(objective, tmp_path, tokenizer_dir, fixed_shard):
    stage_name = _one_stage_per_objective()[objective]
    config = _config(
        tmp_path,
        stage_name,
        tokenizer_dir,
        fixed_shard,
        num_steps=40,
        checkpoint_every=1000,
        trainable=("vision", "projector", "llm"),
        optimizer=OptimizerSpec(lr=3e-3, warmup_steps=0, min_lr_ratio=1.0),
    )
    run_stage(config)
    losses = _losses(config)
    assert losses[-1] < 0.3 * losses[0], (objective, losses[0], losses[-1])
