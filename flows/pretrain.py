"""The pretrain flow: stage 1 (projector alignment) -> 2 (all, multi-task) -> 3 (annealing, RoPE reset)
-> expert (another data mix) -> 4 (fusion).

Each stage is one task run (``train-<stage>``) with its logs, a progress bar, a loss curve, a metrics
table and its checkpoint's location in the UI. Stage data comes from the curate flow's manifests in
the run folder, so this flow runs alone once curation has run. A finished stage is skipped.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from data_specs.presets import Preset, as_preset
from data_specs.stages import StageSpec
from tasks.layout import MixShards, RunLayout, read_mix_shards
from tasks.lineage.prefect_tasks import record_run_end, record_run_start
from tasks.reports import publish_stage_report
from tasks.train import (
    CheckpointRef,
    LaunchConfig,
    finished_checkpoints,
    prepare_tokenizer,
    stage_run_config,
    train_stage_task,
)


def selected(phase: str, preset: Preset, names: list[str] | None) -> list[StageSpec]:
    """The preset's stages of ``phase`` (all of them, or those in ``names``), in pipeline order."""
    unknown = set(names or ()) - {s.name for s in preset.stages}
    if unknown:
        raise ValueError(
            f"unknown stages {sorted(unknown)}; preset {preset.name!r} has {[s.name for s in preset.stages]}"
        )
    return [s for s in preset.stages if s.phase == phase and (not names or s.name in names)]


def run_training_stage(
    spec: StageSpec,
    layout: RunLayout,
    preset: Preset,
    launch: LaunchConfig,
    seed: int,
    checkpoints: dict[str, CheckpointRef],
    data: MixShards | None,
    extra_inputs: tuple[str, ...] = (),
) -> CheckpointRef:
    """Submit one stage on ``data`` (its mix's shards; None for fusion), then publish its report."""
    config, lineage_inputs = stage_run_config(spec, preset, layout, checkpoints, data, seed)
    ref = train_stage_task(config, launch, layout.lineage_db, [*lineage_inputs, *extra_inputs])
    publish_stage_report(spec.name, layout.stage_dir(spec.name), ref.checkpoint_dir, layout.run_dir)
    return ref


@flow(name="pretrain")
def pretrain(
    run_dir: str,
    preset: Preset | str = "tiny",
    stages_to_run: list[str] | None = None,
    launcher: str = "inprocess",
    num_processes: int = 1,
    gpu_limit: str | None = None,
    seed: int = 0,
) -> dict[str, CheckpointRef]:
    """Pre-training stages 1-4 of ``preset`` in ``run_dir`` (a folder the curate flow filled: no default, as
    a new folder has no data); returns each stage's checkpoint."""
    preset = as_preset(preset)
    layout = RunLayout(run_dir)
    record_run_start(layout.lineage_db)
    prepare_tokenizer(layout.tokenizer_dir, preset.tokenizer_dir)
    launch = LaunchConfig(launcher=launcher, num_processes=num_processes, gpu_limit=gpu_limit)
    checkpoints = finished_checkpoints(layout, preset, str(flow_run.id))
    for spec in selected("pretrain", preset, stages_to_run):
        data = None if spec.fusion else read_mix_shards(layout.shards_dir, spec.data_mix)
        checkpoints[spec.name] = run_training_stage(spec, layout, preset, launch, seed, checkpoints, data)
    record_run_end(layout.lineage_db)
    return checkpoints
