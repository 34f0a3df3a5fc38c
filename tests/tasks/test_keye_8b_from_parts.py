"""The keye-8b stage graph started from pretrained parts, at tiny sizes: a SigLIP, a Qwen3 and a tokenizer
saved with ``save_pretrained`` (transformers' own classes, random weights) are the run's input directories;
stage 1 starts from them, and every stage after it runs to a loadable checkpoint. Also: the pre-flight check
of those directories, and the dry run's plan."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
import torch
import webdataset as wds
from PIL import Image
from skimage import data
from transformers import Qwen3Config, Qwen3ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from data_specs.presets import get_preset
from keye_model.config import KeyeConfig
from keye_model.model import KeyeForConditionalGeneration
from keye_model.tokenizer import tiny_tokenizer
from keye_model.training.loader import sha256_of
from keye_model.training.memory import GIB, estimate_memory, parameter_counts
from tasks.layout import MixShards, RunLayout
from tasks.plan import check_run_inputs, format_plan, plan_run, resolve_run_preset
from tasks.train import CheckpointRef, LaunchConfig, prepare_tokenizer, stage_run_config, train_stage

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def save_parts(root, *, intermediate_size: int | None = None):
    """A SigLIP vision tower and a Qwen3 LM of the tiny model's shape (KeyeConfig.preset("tiny"))."""
    tiny = KeyeConfig.preset("tiny")
    torch.manual_seed(7)
    v, t = tiny.vision, tiny.text
    siglip = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=v.hidden_size,
            num_hidden_layers=v.num_hidden_layers,
            num_attention_heads=v.num_attention_heads,
            intermediate_size=v.intermediate_size,
            patch_size=v.patch_size,
            image_size=v.patch_size * v.position_grid_size,
        )
    )
    qwen = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=t.vocab_size,
            hidden_size=t.hidden_size,
            num_hidden_layers=t.num_hidden_layers,
            num_attention_heads=t.num_attention_heads,
            num_key_value_heads=t.num_key_value_heads,
            head_dim=t.head_dim,
            intermediate_size=intermediate_size or t.intermediate_size,
            max_position_embeddings=t.max_position_embeddings,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        )
    )
    siglip.save_pretrained(root / "siglip")
    qwen.save_pretrained(root / "qwen3")
    tiny_tokenizer(root / "tokenizer")
    return str(root / "siglip"), str(root / "qwen3"), str(root / "tokenizer"), siglip, qwen


def write_shard(path) -> MixShards:
    """12 samples (photos at 56x56 and text), each with a preference pair and a replay weight, so one
    shard serves every objective of the graph."""
    with wds.TarWriter(str(path), mtime=0) as writer:
        for i in range(12):
            name = PHOTOS[i % len(PHOTOS)]
            meta = {"chosen": f"It shows a {name}.", "rejected": "I cannot tell.", "replay_weight": 1 + i % 2}
            text = i % 3 == 2
            record = {
                "id": f"k{i:03d}",
                "source": "skimage",
                "modality": "text" if text else "image",
                "task": "instruction" if text else "caption",
                "question": "Count to 3." if text else "What is in the picture?",
                "answer": "1 2 3" if text else f"A photograph of a {name}.",
                "media_path": None,
                "meta": meta,
                "tokens": 12,
            }
            sample = {"__key__": f"k{i:03d}", "json": json.dumps(record).encode()}
            if not text:
                buf = io.BytesIO()
                Image.fromarray(getattr(data, name)()).convert("RGB").resize((56, 56)).save(buf, "PNG")
                sample["png"] = buf.getvalue()
            writer.write(sample)
    return MixShards(
        mix="all",
        manifest_path="",
        paths=(str(path),),
        artifact_ids=("shard-all",),
        sha256s=(sha256_of(path),),
        num_bytes=(path.stat().st_size,),
    )


def tiny_sized(stage):
    """A keye-8b stage at tiny sizes; micro batch 1 with 2 accumulation steps (1 for GSPO, which steps
    per mini-batch), as keye-8b's micro batch 1 is balanced over the accumulated batch."""
    rl = stage.rl and dataclasses.replace(stage.rl, group_size=2, num_minibatches=1, max_new_tokens=8)
    return dataclasses.replace(
        stage,
        num_steps=1,
        micro_batch_size=1,
        grad_accum_steps=1 if stage.rl else 2,
        zero_stage=min(stage.zero_stage, 2),
        seq_len=min(stage.seq_len, 1024),
        checkpoint_every=1,
        rl=rl,
    )


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return save_parts(tmp_path_factory.mktemp("parts"))


@pytest.mark.slow
def test_keye_8b_stage_graph_starts_from_siglip_and_qwen3(parts, tmp_path):
    siglip_dir, qwen_dir, tokenizer_dir, siglip, qwen = parts
    keye_8b = get_preset("keye-8b")
    # the keye-8b stage graph, with the tiny model's shape and sizes, and the run's input directories
    preset = dataclasses.replace(
        keye_8b,
        model="tiny",
        slow_fast="tiny",
        stages=tuple(tiny_sized(s) for s in keye_8b.stages),
        tokenizer_dir=tokenizer_dir,
        vision_init=siglip_dir,
        llm_init=qwen_dir,
    )
    check_run_inputs(preset)  # what resolve_run_preset does for the keye flow
    layout = RunLayout(str(tmp_path / "run"))
    prepare_tokenizer.fn(layout.tokenizer_dir, preset.tokenizer_dir)
    shard = write_shard(tmp_path / "all-000000.tar")
    checkpoints: dict[str, CheckpointRef] = {}
    for spec in preset.stages:
        config, _ = stage_run_config(spec, preset, layout, checkpoints, None if spec.fusion else shard, seed=0)
        assert (config.vision_init, config.llm_init) == ((siglip_dir, qwen_dir) if not spec.inputs else (None, None))
        result = train_stage(config)
        checkpoints[spec.name] = CheckpointRef(
            stage=spec.name, checkpoint_dir=result.checkpoint_dir, artifact_id=spec.name
        )

    # stage 1 trains the projector only: its ViT and LLM are still exactly the saved SigLIP and Qwen3
    stage1 = KeyeForConditionalGeneration.from_pretrained(checkpoints["stage1"].checkpoint_dir)
    for key, value in siglip.state_dict().items():
        if not key.startswith("head."):
            assert torch.equal(stage1.vision.state_dict()[key], value), key
    for key, value in qwen.state_dict().items():
        assert torch.equal(stage1.language_model.state_dict()[key], value), key
    samples = (layout.root / "stages" / "stage1" / "samples.jsonl").read_text().splitlines()
    assert len(json.loads(samples[0])["samples"]) == 2  # one window: micro batch 1 x 2 accumulation steps
    final = KeyeForConditionalGeneration.from_pretrained(checkpoints["alignment"].checkpoint_dir)
    assert final.config.text.rope_theta == 8e6  # stage 3's base, kept through fusion and post-training
    assert not torch.equal(final.language_model.state_dict()["lm_head.weight"], qwen.state_dict()["lm_head.weight"])


def test_missing_or_misshapen_directories_are_refused_before_the_run(parts, tmp_path):
    siglip_dir, qwen_dir, tokenizer_dir, _, _ = parts
    with pytest.raises(FileNotFoundError, match=f"SigLIP \\(vision init\\) directory {tmp_path}/nope does not exist"):
        resolve_run_preset("tiny", vision_init=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=f"tokenizer directory {tmp_path}/gone does not exist"):
        resolve_run_preset("tiny", tokenizer=str(tmp_path / "gone"))
    with pytest.raises(ValueError, match=f"LLM init directory {siglip_dir} holds a 'siglip_vision_model' model"):
        resolve_run_preset("tiny", llm_init=siglip_dir)
    # keye-8b's shape against the tiny parts: every differing field named, checkpoint value first
    with pytest.raises(ValueError, match=r"does not fit TextConfig: .*'hidden_size': \(128, 4096\)"):
        resolve_run_preset("keye-8b", llm_init=qwen_dir)
    with pytest.raises(ValueError, match=r"does not fit the model's VisionConfig: .*'hidden_size': \(128, 1152\)"):
        resolve_run_preset("keye-8b", vision_init=siglip_dir)
    with pytest.raises(ValueError, match=r"'intermediate_size': \(256, 384\)"):
        resolve_run_preset("tiny", llm_init=save_parts(tmp_path, intermediate_size=256)[1])
    assert resolve_run_preset("tiny", tokenizer=tokenizer_dir, vision_init=siglip_dir, llm_init=qwen_dir).llm_init


def test_dry_run_plan_of_keye_8b(tmp_path):
    preset = resolve_run_preset("keye-8b")
    layout, launch = RunLayout(str(tmp_path)), LaunchConfig(launcher="deepspeed", num_processes=8)
    plans = {p.stage: p for p in plan_run(preset, layout, launch)}
    assert list(plans) == [s.name for s in preset.stages]
    stage2 = plans["stage2"]
    assert stage2.samples_per_step == 8 * 1 * 8 and stage2.zero_stage == 2
    assert stage2.command.endswith(f"--config {tmp_path.resolve()}/stages/stage2/run_config.json")
    assert "--num_gpus=8" in stage2.command
    # the memory module's worked example: 2 + 2/8 + 12/8 bytes per parameter, plus activations and logits
    params = sum(parameter_counts(KeyeConfig.preset("keye-8b")).values())
    memory = stage2.memory
    assert (memory.weights, memory.gradients, memory.optimizer) == (2 * params, 2 * params / 8, 12 * params / 8)
    assert memory.activations == 34 * 8192 * 4096 * 36 + 10 * 8192 * 151_936
    assert round(memory.total / GIB, 1) == 80.0
    # ZeRO-3 splits the weights too; stage 1 trains only the projector
    gspo = estimate_memory(KeyeConfig.preset("keye-8b"), preset.stage("gspo"), 8)
    assert gspo.weights == 2 * params / 8
    assert plans["stage1"].memory.optimizer == 12 * 40_125_952 / 8
    assert plans["stage4"].memory is None and plans["stage4"].zero_stage is None
    text = "\n".join(format_plan(list(plans.values()), preset, layout, launch))
    assert "stage3: starts from checkpoint of stage2" in text and "seq_len 131,072" in text
    assert "random ViT + random LLM" in text
