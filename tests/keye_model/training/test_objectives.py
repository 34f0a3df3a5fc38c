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
from data_specs.stages import OBJECTIVES, VISION_PRETRAIN, OptimizerSpec, StageSpec
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
    stages["siglip"] = VISION_PRETRAIN  # only demo-long pre-trains its ViT
    return stages


def _stage(name: str) -> StageSpec:
    """The tiny preset's stage, or demo-long's vision pre-training at tiny sizes."""
    if name == VISION_PRETRAIN:
        vision = get_preset("demo-long").stage(name)
        return dataclasses.replace(vision, num_steps=4, micro_batch_size=4, checkpoint_every=2)
    return get_preset("tiny").stage(name)


#: (photograph, caption) pairs for the ``siglip`` objective: four images, four different captions.
CAPTIONED = (("astronaut", "an astronaut"), ("coffee", "a cup of coffee"), ("chelsea", "a cat"), ("rocket", "a rocket"))


def _png(name: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(getattr(data, name)()).convert("RGB").resize((56, 56)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def caption_shard(tmp_path_factory) -> str:
    """Four captioned photographs: the ``image_captions`` mix's kind of sample."""
    path = tmp_path_factory.mktemp("captions") / "captions-000000.tar"
    with wds.TarWriter(str(path), mtime=0) as writer:
        for name, caption in CAPTIONED:
            record = {
                "id": name,
                "source": "test",
                "modality": "image",
                "task": "caption",
                "question": "Describe the image.",
                "answer": caption,
                "media_path": None,
                "tokens": 12,
            }
            writer.write({"__key__": name, "json": json.dumps(record).encode(), "png": _png(name)})
    return str(path)


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
    spec = dataclasses.replace(_stage(stage_name), **changes)
    return RunConfig(
        stage=spec, output_dir=str(tmp_path / stage_name), tokenizer_dir=tokenizer_dir, shards=(shard,), seed=1
    )


def _losses(config: RunConfig) -> list[float]:
    path = Path(config.output_dir) / "metrics.jsonl"
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("objective", sorted(set(OBJECTIVES) - {"fusion"}))
def test_every_training_objective_runs_one_step(objective, tmp_path, tokenizer_dir, fixed_shard, caption_shard):
    stage_name = _one_stage_per_objective()[objective]
    shard = caption_shard if objective == "siglip" else fixed_shard
    judge = None
    if _stage(stage_name).reward_model:
        judge = run_stage(_config(tmp_path, "reward", tokenizer_dir, fixed_shard, num_steps=1)).checkpoint_dir
    config = dataclasses.replace(
        _config(tmp_path, stage_name, tokenizer_dir, shard, num_steps=1), reward_model_checkpoint=judge
    )
    result = run_stage(config)
    metrics = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert result.steps == 1 and len(metrics) == 1 and math.isfinite(metrics[0]["loss"])
    if objective == "mpo":
        assert {"preference_loss", "quality_loss", "generation_loss", "bco_delta"} <= set(metrics[0])
    if objective == "siglip":
        assert 0.0 <= metrics[0]["caption_accuracy"] <= 1.0
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


def test_siglip_overfits_a_fixed_batch_and_learns_which_caption_is_whose(tmp_path, tokenizer_dir, caption_shard):
    """Vision pre-training on four captioned photographs: the loss falls well below its start and each image
    ends closest to its own caption (the stage's ``caption_accuracy``)."""
    config = _config(
        tmp_path,
        VISION_PRETRAIN,
        tokenizer_dir,
        caption_shard,
        num_steps=40,
        checkpoint_every=1000,
        optimizer=OptimizerSpec(lr=3e-3, warmup_steps=0, min_lr_ratio=1.0),
    )
    run_stage(config)
    losses = _losses(config)
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    metrics = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["caption_accuracy"] == 1.0


def test_siglip_names_a_sample_that_is_not_an_image_with_a_caption(tmp_path, tokenizer_dir, fixed_shard):
    config = _config(tmp_path, VISION_PRETRAIN, tokenizer_dir, fixed_shard, num_steps=1, micro_batch_size=2)
    with pytest.raises(ValueError, match="sample q1 is not an image with a caption"):
        run_stage(config)
