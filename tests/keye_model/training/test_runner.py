"""The stage runner on the tiny preset with a real DeepSpeed engine (CPU, gloo, fp32)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from data_specs.presets import get_stage
from keye_model.model import KeyeForConditionalGeneration
from keye_model.tokenizer import load_tokenizer
from keye_model.training.runner import RunConfig, build_model, run_stage

pytestmark = pytest.mark.slow


def stage(name: str, **changes):
    return dataclasses.replace(get_stage("tiny", name), **{"num_steps": 3, **changes})


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, tokenizer_dir, shards):
    config = RunConfig(
        stage=stage("stage1"),
        output_dir=str(tmp_path_factory.mktemp("stage1")),
        tokenizer_dir=tokenizer_dir,
        shards=shards,
        seed=3,
    )
    return config, run_stage(config)


def test_stage1_trains_only_the_projector_and_ends_with_a_loadable_checkpoint(stage1, tokenizer_dir):
    config, result = stage1
    assert result.steps == 3 and result.samples_seen == 6  # 3 steps x micro batch 2 x world 1
    trained = KeyeForConditionalGeneration.from_pretrained(result.checkpoint_dir)
    initial = build_model(config, load_tokenizer(tokenizer_dir))  # same seed: the same initial weights
    before, after = initial.state_dict(), trained.state_dict()
    for name, tensor in after.items():
        if name.startswith("projector."):
            continue
        assert torch.equal(tensor, before[name]), f"frozen parameter {name} changed"
    assert any(not torch.equal(after[n], before[n]) for n in after if n.startswith("projector."))
    lines = (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert json.loads(lines[-1])["loss"] > 0
    # each step logs the rate it trained at: warm-up (1 step) at half of 1e-3, then the cosine to 0.1 of it
    assert [json.loads(line)["lr"] for line in lines] == pytest.approx([5e-4, 1e-3, 5.5e-4])
    written = json.loads((Path(config.output_dir) / "result.json").read_text())
    assert written == result.to_dict() and 0 < result.wall_s and result.finished_at <= time.time()


def test_stage3_resets_rope_theta(stage1, tmp_path, tokenizer_dir, shards):
    _, first = stage1
    config = RunConfig(
        stage=stage("stage3", num_steps=1),
        output_dir=str(tmp_path),
        tokenizer_dir=tokenizer_dir,
        shards=shards,
        init_checkpoint=first.checkpoint_dir,
    )
    result = run_stage(config)
    before = KeyeForConditionalGeneration.from_pretrained(first.checkpoint_dir)
    after = KeyeForConditionalGeneration.from_pretrained(result.checkpoint_dir)
    assert before.config.text.rope_theta == 1_000_000 and after.config.text.rope_theta == 8_000_000
    inv_freq = after.language_model.model.rotary_emb.inv_freq
    assert inv_freq[1].item() == pytest.approx(8_000_000 ** (-2 / after.config.text.head_dim), rel=1e-5)


def _launch(config: RunConfig, path: Path) -> subprocess.Popen:
    path.write_text(config.to_json())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return subprocess.Popen(
        [sys.executable, "-m", "keye_model.training", "--config", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _samples(out: Path) -> list[str]:
    return [s for line in (out / "samples.jsonl").read_text().splitlines() for s in json.loads(line)["samples"]]


def test_killed_stage_resumes_at_exactly_the_next_sample(tmp_path, tokenizer_dir, shards):
    spec = stage("sft", num_steps=6, checkpoint_every=2)
    whole = RunConfig(stage=spec, output_dir=str(tmp_path / "whole"), tokenizer_dir=tokenizer_dir, shards=shards)
    killed = dataclasses.replace(whole, output_dir=str(tmp_path / "killed"))
    proc = _launch(killed, tmp_path / "killed.json")
    latest = tmp_path / "killed" / "deepspeed" / "latest"
    deadline = time.monotonic() + 300
    while not latest.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "result.json").exists()

    resumed = _launch(killed, tmp_path / "killed.json")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    run_stage(whole)
    assert _samples(tmp_path / "killed") == _samples(tmp_path / "whole")
    # 6 steps x 2 samples from 24 distinct samples: nothing seen twice, nothing skipped.
    assert len(set(_samples(tmp_path / "whole"))) == 12
    a = KeyeForConditionalGeneration.from_pretrained(tmp_path / "killed" / "checkpoint").state_dict()
    b = KeyeForConditionalGeneration.from_pretrained(tmp_path / "whole" / "checkpoint").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name])


@pytest.mark.parametrize("name", ["gspo", "alignment"])
def test_gspo_stages_run_with_rewards_and_save(name, stage1, tmp_path, tokenizer_dir, shards):
    _, first = stage1
    judge = None
    if name == "alignment":  # weighs judge and reward-model rewards: train a reward model first
        judge = run_stage(
            RunConfig(
                stage=stage("reward", num_steps=1),
                output_dir=str(tmp_path / "rm"),
                tokenizer_dir=tokenizer_dir,
                shards=shards,
                init_checkpoint=first.checkpoint_dir,
            )
        ).checkpoint_dir
    # The alignment run uses ZeRO-3 as the keye-8b preset does (partitioned parameters, gathered save).
    spec = stage(name, num_steps=2, zero_stage=3 if name == "alignment" else 2)
    config = RunConfig(
        stage=spec,
        output_dir=str(tmp_path / name),
        tokenizer_dir=tokenizer_dir,
        shards=shards,
        init_checkpoint=first.checkpoint_dir,
        reward_model_checkpoint=judge,
    )
    result = run_stage(config)
    metrics = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(0.0 <= m["mean_reward"] <= 1.0 for m in metrics)
    # a step updates once per mini-batch (2 here) and the schedule counts steps: its warm-up step runs both
    # updates at half the rate, the next step the full one
    assert spec.optimizer.warmup_steps == 1 and spec.rl.num_minibatches == 2
    assert [m["lr"] for m in metrics] == pytest.approx([spec.optimizer.lr / 2, spec.optimizer.lr])
    KeyeForConditionalGeneration.from_pretrained(result.checkpoint_dir)


def test_lr_schedule_spans_steps_whatever_the_updates_a_step_makes():
    from data_specs.stages import OptimizerSpec
    from keye_model.training.objectives import get_objective
    from keye_model.training.runner import lr_lambda

    spec = stage("stage1", optimizer=OptimizerSpec(lr=1e-3, warmup_steps=1, min_lr_ratio=0.0))
    assert [lr_lambda(spec)(u) for u in range(3)] == pytest.approx([0.5, 1.0, 0.5])
    assert [lr_lambda(spec, 2)(u) for u in range(6)] == pytest.approx([0.5, 0.5, 1.0, 1.0, 0.5, 0.5])
    gspo = stage("gspo")
    assert get_objective("gspo").updates_per_step(gspo) == gspo.rl.num_minibatches
    assert get_objective("lm").updates_per_step(spec) == 1
    with pytest.raises(ValueError, match="updates_per_step must be >= 1"):
        lr_lambda(spec, 0)


def test_torchrun_two_ranks_train_disjoint_balanced_shares(tmp_path, tokenizer_dir, shards):
    from tasks.train import LaunchConfig, train_stage

    spec = stage("sft", num_steps=2)
    config = RunConfig(stage=spec, output_dir=str(tmp_path), tokenizer_dir=tokenizer_dir, shards=shards)
    result = train_stage(config, LaunchConfig(launcher="torchrun", num_processes=2, timeout_s=600))
    KeyeForConditionalGeneration.from_pretrained(result.checkpoint_dir)
    rank0 = [json.loads(line)["samples"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    rank1 = [json.loads(line)["samples"] for line in (tmp_path / "samples-rank1.jsonl").read_text().splitlines()]
    for mine, theirs in zip(rank0, rank1):
        assert mine and theirs and not set(mine) & set(theirs)  # each window split between the ranks
    # Two windows of world x micro batch = 4 samples each: all 8 samples trained exactly once.
    assert len({s for step in rank0 + rank1 for s in step}) == 8


def test_zero3_two_ranks_when_one_rank_has_no_image(tmp_path, tokenizer_dir, alternating_shard):
    """Micro batch 1 over alternating image / text samples: every window gives the image to one rank and
    text only to the other, whose vision path must still take part in ZeRO-3's collectives."""
    from tasks.train import LaunchConfig, train_stage

    spec = stage("stage2", num_steps=2, zero_stage=3, micro_batch_size=1)
    config = RunConfig(stage=spec, output_dir=str(tmp_path), tokenizer_dir=tokenizer_dir, shards=(alternating_shard,))
    result = train_stage(config, LaunchConfig(launcher="torchrun", num_processes=2, timeout_s=300))
    KeyeForConditionalGeneration.from_pretrained(result.checkpoint_dir)


def test_resumed_stage_keeps_its_token_count_and_final_loss(tmp_path, tokenizer_dir, shards):
    """A stage stopped after a checkpoint and resumed, and one killed during its final save (DeepSpeed
    checkpoint of the last step written, no checkpoint/ or result.json yet), report the uninterrupted
    run's tokens and loss."""
    spec = stage("sft", num_steps=4, checkpoint_every=2)
    whole = RunConfig(stage=spec, output_dir=str(tmp_path / "whole"), tokenizer_dir=tokenizer_dir, shards=shards)
    expected = run_stage(whole)
    assert expected.tokens_seen > 0 and expected.final_loss is not None

    stopped = dataclasses.replace(whole, output_dir=str(tmp_path / "stopped"))
    run_stage(dataclasses.replace(stopped, stop_after_steps=2))
    resumed = run_stage(stopped)
    assert (resumed.tokens_seen, resumed.final_loss) == (expected.tokens_seen, expected.final_loss)
    tokens = [json.loads(line)["tokens"] for line in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert tokens == [
        json.loads(line)["tokens"] for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    ]

    (tmp_path / "whole" / "result.json").unlink()
    shutil.rmtree(tmp_path / "whole" / "checkpoint")
    again = run_stage(whole)
    assert again.steps == 4 and (again.tokens_seen, again.final_loss) == (expected.tokens_seen, expected.final_loss)
    assert json.loads((tmp_path / "whole" / "result.json").read_text())["final_loss"] == expected.final_loss


def test_resume_drops_a_log_line_cut_by_a_kill(tmp_path, tokenizer_dir, shards):
    spec = stage("sft", num_steps=4, checkpoint_every=2)
    config = RunConfig(stage=spec, output_dir=str(tmp_path), tokenizer_dir=tokenizer_dir, shards=shards)
    run_stage(dataclasses.replace(config, stop_after_steps=3))  # steps 1-3 logged, checkpoint at 2
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"stage": "sft", "st')  # a kill in the middle of appending step 4's line
    run_stage(config)
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert not list(tmp_path.glob(".*.partial"))


def test_param_groups_scale_a_module_groups_rate_and_skip_frozen_ones():
    from data_specs.stages import OptimizerSpec, StageSpec
    from keye_model.config import KeyeConfig
    from keye_model.training.runner import param_groups

    model = KeyeForConditionalGeneration(KeyeConfig.preset("tiny"))
    model.set_trainable(("vision", "llm"))
    spec = OptimizerSpec(lr=1e-3, lr_scales=(("vision", 0.1),))
    groups = param_groups(model, spec)
    assert [(g["group"], g["lr"]) for g in groups] == [("vision", pytest.approx(1e-4)), ("llm", 1e-3)]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    with pytest.raises(ValueError, match="unknown groups \\['vit'\\]"):
        param_groups(model, OptimizerSpec(lr=1e-3, lr_scales=(("vit", 0.1),)))
    with pytest.raises(ValueError, match="lr_scales must be positive"):
        OptimizerSpec(lr_scales=(("vision", 0.0),))
    # the scales survive the run config's JSON round trip
    sft = dataclasses.replace(get_stage("demo", "sft"))
    assert sft.optimizer.lr_scales == (("vision", 0.1),)
    assert StageSpec.from_json(sft.to_json()) == sft
