"""A run's inputs checked and its plan printed without running it (``keye run --dry-run``).

``resolve_run_preset`` is how the ``keye`` flow (and the dry run) turn a preset's name and the run's
input directories (tokenizer, SigLIP, Qwen3) into one ``Preset``: the directories are checked against
the preset's model shape at once, before curation spends hours (``keye_model.parts``).

``plan_run`` lists, per stage, what it starts from, its data mix, steps and batch, ZeRO stage, a per-GPU
memory estimate (``keye_model.training.memory``) and the command that launches it. It reads no data,
loads no weights and trains nothing.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from data_specs.presets import Preset, get_preset
from keye_model.config import KeyeConfig
from keye_model.parts import check_parts
from keye_model.training.memory import MemoryEstimate, estimate_memory, parameter_counts
from tasks.layout import RunLayout
from tasks.train import LaunchConfig


def resolve_run_preset(
    name: str, tokenizer: str | None = None, vision_init: str | None = None, llm_init: str | None = None
) -> Preset:
    """The named preset with the run's input directories (absolute paths; None keeps the preset's own),
    checked: FileNotFoundError for a missing directory, ValueError for another model type or shape."""
    preset = get_preset(name)

    def absolute(path: str | None, default: str | None) -> str | None:
        return str(Path(path).expanduser().resolve()) if path else default

    preset = dataclasses.replace(
        preset,
        tokenizer_dir=absolute(tokenizer, preset.tokenizer_dir),
        vision_init=absolute(vision_init, preset.vision_init),
        llm_init=absolute(llm_init, preset.llm_init),
    )
    check_run_inputs(preset)
    return preset


def check_run_inputs(preset: Preset) -> None:
    """Refuse a tokenizer, SigLIP or Qwen3 directory that is missing or does not fit ``preset.model``."""
    model = KeyeConfig.preset(preset.model)
    if preset.tokenizer_dir is not None:
        from keye_model.tokenizer import load_tokenizer

        if not Path(preset.tokenizer_dir).is_dir():
            raise FileNotFoundError(f"tokenizer directory {preset.tokenizer_dir} does not exist")
        size = len(load_tokenizer(preset.tokenizer_dir))
        if size > model.text.vocab_size:
            raise ValueError(
                f"tokenizer {preset.tokenizer_dir} has {size} tokens, more than model {preset.model!r}'s "
                f"vocabulary of {model.text.vocab_size}"
            )
    check_parts(model, preset.vision_init, preset.llm_init)


@dataclass(frozen=True, kw_only=True)
class StagePlan:
    """What one stage of a run will do, as the dry run prints it."""

    stage: str
    """Stage name."""
    starts_from: str
    """Its starting weights, in words."""
    data: str
    """Its data mix (and the tokens curation shards for it, when the preset sizes mixes)."""
    num_steps: int
    """Optimizer steps."""
    samples_per_step: int
    """ranks x micro batch x accumulation steps: one balanced window of the shard stream."""
    batch: str
    """The same, spelled out."""
    seq_len: int
    """Packed row length."""
    zero_stage: int | None
    """DeepSpeed ZeRO stage; None for a merge."""
    trainable: tuple[str, ...]
    """Module groups it updates."""
    memory: MemoryEstimate | None
    """Per-GPU memory estimate; None for a merge (CPU, no optimizer)."""
    command: str
    """How its ranks are started."""


def plan_run(
    preset: Preset, layout: RunLayout, launch: LaunchConfig, stages: list[str] | None = None
) -> list[StagePlan]:
    """The plan of ``stages`` (all by default) of ``preset`` in ``layout`` under ``launch``."""
    model = KeyeConfig.preset(preset.model)
    world = launch.num_processes * launch.num_nodes
    plans = []
    for spec in preset.stages:
        if stages and spec.name not in stages:
            continue
        if spec.fusion is not None:
            starts = f"{spec.fusion.method} merge of {', '.join(spec.inputs[1:])} onto {spec.inputs[0]}"
        elif spec.inputs:
            starts = f"checkpoint of {spec.inputs[0]}"
        else:
            parts = [f"SigLIP {preset.vision_init}" if preset.vision_init else "random ViT"]
            parts.append(f"Qwen3 {preset.llm_init}" if preset.llm_init else "random LLM")
            starts = " + ".join(parts) + ", random projector"
        target = preset.mix_target_tokens(spec.data_mix)
        data = "none (merges checkpoints)" if spec.fusion else spec.data_mix
        if target and not spec.fusion:
            data += f" ({target:,} tokens curated)"
        config_path = Path(layout.stage_dir(spec.name)) / "run_config.json"
        if launch.launcher == "inprocess":
            command = f"in the flow's process (= {sys.executable} -m keye_model.training --config {config_path})"
        else:
            command = " ".join(launch.command(config_path))
        merge = spec.fusion is not None
        plans.append(
            StagePlan(
                stage=spec.name,
                starts_from=starts,
                data=data,
                num_steps=spec.num_steps,
                samples_per_step=world * spec.micro_batch_size * spec.grad_accum_steps,
                batch=f"{world} ranks x micro batch {spec.micro_batch_size} x {spec.grad_accum_steps} accumulation",
                seq_len=spec.seq_len,
                zero_stage=None if merge else spec.zero_stage,
                trainable=spec.trainable,
                memory=None if merge else estimate_memory(model, spec, world),
                command=command,
            )
        )
    return plans


def format_plan(plans: list[StagePlan], preset: Preset, layout: RunLayout, launch: LaunchConfig) -> list[str]:
    """The dry run's printout: a header, then a block per stage."""
    counts = parameter_counts(KeyeConfig.preset(preset.model))
    world = launch.num_processes * launch.num_nodes
    lines = [
        f"Dry run of preset {preset.name} in {layout.root}: {launch.launcher} launcher, {world} rank(s). "
        "Nothing is trained and no data is read.",
        f"Model {preset.model}: {sum(counts.values()):,} parameters ("
        + ", ".join(f"{group} {count:,}" for group, count in counts.items())
        + f"); tokenizer: {preset.tokenizer_dir or 'the small BPE trained into the run folder'}",
        "",
    ]
    for plan in plans:
        lines.append(f"{plan.stage}: starts from {plan.starts_from}")
        lines.append(f"    data      {plan.data}")
        if plan.memory is None:
            lines.append("    steps     one merge (no optimizer), on the CPU of rank 0")
        else:
            lines.append(
                f"    steps     {plan.num_steps:,} x {plan.samples_per_step} samples ({plan.batch}), "
                f"seq_len {plan.seq_len:,}"
            )
            lines.append(f"    ZeRO      stage {plan.zero_stage}; trains {', '.join(plan.trainable)}")
            lines.append(f"    memory    ~{plan.memory.describe()} per GPU")
        lines.append(f"    launch    {plan.command}")
    lines += [
        "",
        "Memory per GPU, rough: bf16 weights (all) and gradients (trainable), fp32 master + Adam m, v (12 bytes",
        "per trainable parameter), split over ranks by the ZeRO stage; activations of one micro batch without",
        "recomputation: 34 B x tokens x hidden x layers of the LLM, plus 10 B x tokens x vocabulary for the",
        "logits. Not counted: ViT activations, MPO's reference model, rollout caches, communication buffers.",
    ]
    return lines
