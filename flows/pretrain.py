"""The pretrain flow: stage 1 (projector alignment) -> 2 (all, multi-task) -> 3 (annealing, RoPE reset)
-> expert (another data mix) -> 4 (fusion).

Each stage is one task run (``train-<stage>``) with its logs, a progress bar, a loss curve, a metrics
table and its checkpoint's location in the UI. Stage data comes from the curate flow's manifests in
the run folder, so this flow runs alone once curation has run. A finished stage is skipped.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from data_specs.stages import StageSpec, stages
from keye_model.fusion import FusionConfig
from keye_model.training.runner import RunConfig
from tasks.layout import RunLayout, read_mix_shards
from tasks.lineage.prefect_tasks import record_run_end, record_run_start
from tasks.reports import publish_stage_report
from tasks.train import LaunchConfig, checkpoint_artifact, finished_result, prepare_tokenizer, train_stage_task


def selected(phase: str, preset: str, names: list[str] | None) -> list[StageSpec]:
    chosen = [s for s in stages(preset) if s.phase == phase and (not names or s.name in names)]
    unknown = set(names or ()) - {s.name for s in stages(preset)}
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; preset {preset!r} has {[s.name for s in stages(preset)]}")
    return chosen


def finished_checkpoints(layout: RunLayout, preset: str, run_id: str) -> dict[str, dict]:
    """Checkpoints of the stages already finished in this run folder (inputs of the stages to run)."""
    out = {}
    for spec in stages(preset):
        done = finished_result(layout.stage_dir(spec.name))
        if done is not None and done.checkpoint_dir:
            out[spec.name] = {"checkpoint_dir": done.checkpoint_dir,
                              "artifact_id": checkpoint_artifact(done, run_id).artifact_id}
    return out


def run_training_stage(spec: StageSpec, layout: RunLayout, preset: str, launch: LaunchConfig, seed: int,
                       checkpoints: dict[str, dict], *, extra_inputs: tuple[str, ...] = (), shards=None,
                       reward_model: str | None = None) -> dict:
    """Submit one stage: its data mix's shards, its input checkpoints, then publish its report."""
    inputs = [checkpoints[name] for name in spec.inputs if name in checkpoints]
    if spec.objective == "fusion":
        config = RunConfig(stage=spec, output_dir=layout.stage_dir(spec.name), tokenizer_dir=layout.tokenizer_dir,
                           init_checkpoint=inputs[0]["checkpoint_dir"],
                           expert_checkpoints=tuple(c["checkpoint_dir"] for c in inputs[1:]),
                           fusion=FusionConfig(method="ties"), preset=preset, seed=seed)
        lineage_inputs = [c["artifact_id"] for c in inputs]
    else:
        mix = shards or read_mix_shards(layout.shards_dir, spec.data_mix)
        config = RunConfig(stage=spec, output_dir=layout.stage_dir(spec.name), tokenizer_dir=layout.tokenizer_dir,
                           init_checkpoint=inputs[0]["checkpoint_dir"] if inputs else None, shards=mix.paths,
                           preset=preset, seed=seed, reward_model_checkpoint=reward_model)
        lineage_inputs = [*mix.artifact_ids, *(c["artifact_id"] for c in inputs), *extra_inputs]
    result = train_stage_task(config, launch, layout.lineage_db, lineage_inputs)
    publish_stage_report(spec.name, layout.stage_dir(spec.name), result["checkpoint_dir"])
    return result


@flow(name="pretrain")
def pretrain(run_dir: str = "runs/demo", preset: str = "tiny", stages_to_run: list[str] | None = None,
             launcher: str = "inprocess", num_processes: int = 1, gpu_limit: str | None = None,
             seed: int = 0) -> dict[str, dict]:
    """Pre-training stages 1-4 of ``preset``; returns each stage's checkpoint and lineage id."""
    layout = RunLayout(run_dir)
    record_run_start(layout.lineage_db)
    prepare_tokenizer(layout.tokenizer_dir, preset)
    launch = LaunchConfig(launcher=launcher, num_processes=num_processes, gpu_limit=gpu_limit)
    checkpoints = finished_checkpoints(layout, preset, str(flow_run.id))
    for spec in selected("pretrain", preset, stages_to_run):
        checkpoints[spec.name] = run_training_stage(spec, layout, preset, launch, seed, checkpoints)
    record_run_end(layout.lineage_db)
    return checkpoints
