"""Launching training stages: in-process for one process, ``torchrun``/``deepspeed`` for several.

``train_stage`` is the plain function; ``train_stage_task`` its Prefect entry point. A stage whose
``result.json`` exists is finished and is skipped (the runner writes it last), and a stage that died
midway resumes from its latest DeepSpeed checkpoint, so re-running a failed pipeline continues where
it stopped. Launched ranks write to stdout/stderr, which Prefect does not capture: every line is
pumped into this module's logger, and the launch has its own timeout (Prefect's task timeout cannot
interrupt blocking code), after which the whole process group is killed.

A stage's lineage (checkpoint, edges, metrics) is written in one transaction, once: a rerun that finds
the finished stage adds nothing, and a writer that finds the lineage file held by a reader waits
(``write_retrying``) instead of failing the flow after training finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.concurrency.sync import concurrency
from prefect.runtime import flow_run

from data_specs.presets import Preset
from data_specs.stages import StageSpec
from keye_model.atomic_file import write_text_atomically
from keye_model.training.runner import RunConfig, StageResult
from tasks.layout import MixShards, RunLayout
from tasks.lineage import Artifact, Edge, LineageStore, Metric
from tasks.lineage.store import write_retrying
from tasks.reports import key_safe

log = logging.getLogger(__name__)

LAUNCHERS = ("inprocess", "torchrun", "deepspeed")


@dataclass(frozen=True, kw_only=True)
class LaunchConfig:
    """How a stage's ranks are started."""

    launcher: str = "inprocess"
    """``inprocess`` (one rank, in the calling process), ``torchrun`` or ``deepspeed``."""
    num_processes: int = 1
    """Ranks per node (GPUs per node on a GPU machine)."""
    num_nodes: int = 1
    """Nodes; with more than one, ``hostfile`` (deepspeed) or the rendezvous settings (torchrun) apply."""
    hostfile: str | None = None
    """DeepSpeed hostfile for multi-node runs."""
    rdzv_endpoint: str | None = None
    """torchrun rendezvous host:port for multi-node runs."""
    timeout_s: float = 7 * 24 * 3600
    """Wall-clock limit of a launched stage; the process group is killed past it."""
    gpu_limit: str | None = None
    """Name of a Prefect global concurrency limit (``prefect gcl create gpu --limit 8``) the stage takes
    ``num_processes * num_nodes`` slots of while it trains, so runs sharing GPUs queue; None: no limit."""

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launcher {self.launcher!r} not in {LAUNCHERS}")
        if self.launcher == "inprocess" and self.num_processes * self.num_nodes != 1:
            raise ValueError("the inprocess launcher runs one rank; use torchrun or deepspeed for more")

    def command(self, config_path: Path) -> list[str]:
        module = ["-m", "keye_model.training", "--config", str(config_path)]
        if self.launcher == "torchrun":
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc_per_node={self.num_processes}",
                f"--nnodes={self.num_nodes}",
            ]
            if self.rdzv_endpoint:
                cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint={self.rdzv_endpoint}"]
            return cmd + module
        cmd = [
            shutil.which("deepspeed") or "deepspeed",
            f"--num_gpus={self.num_processes}",
            f"--num_nodes={self.num_nodes}",
        ]
        if self.hostfile:
            cmd.append(f"--hostfile={self.hostfile}")
        return cmd + ["--module", "keye_model.training", "--config", str(config_path)]


@dataclass(frozen=True, kw_only=True)
class CheckpointRef:
    """A finished stage's checkpoint, as later stages, evaluation and lineage refer to it."""

    stage: str
    """Stage that made it."""
    checkpoint_dir: str
    """HF-format directory ``KeyeForConditionalGeneration.from_pretrained`` loads."""
    artifact_id: str
    """Its id in the lineage store."""


def finished_result(output_dir: str | Path) -> StageResult | None:
    """The result of a finished stage (its ``result.json``), or None."""
    path = Path(output_dir) / "result.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    # a field a result.json written before it existed lacks keeps its default (``finished_at``)
    return StageResult(**{f.name: data[f.name] for f in dataclasses.fields(StageResult) if f.name in data})


def training_minutes(layout: RunLayout) -> dict[str, float]:
    """Minutes of training the run folder had done when each of its stages finished: the runners' wall
    time (``result.json``'s ``wall_s``) summed over every stage up to and including that one, in the order
    they finished (``finished_at``; a result written before that was recorded: the file's modification
    time, as it is written once, when the stage ends), the rounds of an RL stage (``gspo-r1``,
    ``coldstart-r2``) included. The x axis of held-out accuracy against training time.

    Example: ``{"stage1": 0.14, "stage2": 1.94, "stage3": 2.2, ...}``.
    """
    finished = []
    for path in Path(layout.root, "stages").glob("*/result.json"):
        result = finished_result(path.parent)
        finished.append((result.finished_at or path.stat().st_mtime, path.parent.name, result.wall_s))
    minutes: dict[str, float] = {}
    total = 0.0
    for _, stage, wall_s in sorted(finished):
        total += wall_s / 60
        minutes[stage] = total
    return minutes


def input_fingerprint(config: RunConfig) -> str:
    """What a stage's result depends on, by content: its config, its upstream checkpoints' weights and its
    shards' bytes -- never modification times, so data written again with the same bytes (a re-curation,
    a copy of the run folder) does not retrain anything.

    Shards: the manifest's sha256 of each (in ``config.shard_sha256s``, part of the config's JSON; the
    runner refuses a shard that differs from it); shards without them are hashed here. Upstream
    checkpoints: the sha256 of their ``model.safetensors``, as ``checkpoint_artifact`` records it in
    ``result.json`` (hashed here only when not recorded yet: the same value either way).
    """
    digest = hashlib.sha256(config.to_json().encode())
    for checkpoint in (config.init_checkpoint, *config.expert_checkpoints, config.reward_model_checkpoint):
        if checkpoint:
            result, weights = Path(checkpoint).parent / "result.json", Path(checkpoint) / "model.safetensors"
            recorded = json.loads(result.read_text()).get("weights_sha256") if result.exists() else None
            if recorded is None and weights.exists():
                with weights.open("rb") as f:
                    recorded = hashlib.file_digest(f, "sha256").hexdigest()
            digest.update((recorded or checkpoint).encode())
    if len(config.shard_sha256s) != len(config.shards):
        for shard in config.shards:
            with open(shard, "rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def finished_checkpoints(layout: RunLayout, preset: Preset, run_id: str) -> dict[str, CheckpointRef]:
    """Checkpoints of the stages already finished in this run folder (inputs of the stages to run)."""
    out = {}
    for spec in preset.stages:
        done = finished_result(layout.stage_dir(spec.name))
        if done is not None and done.checkpoint_dir:
            out[spec.name] = CheckpointRef(
                stage=spec.name,
                checkpoint_dir=done.checkpoint_dir,
                artifact_id=checkpoint_artifact(done, run_id).artifact_id,
            )
    return out


def stage_run_config(
    spec: StageSpec,
    preset: Preset,
    layout: RunLayout,
    checkpoints: dict[str, CheckpointRef],
    data: MixShards | None,
    seed: int,
) -> tuple[RunConfig, list[str]]:
    """The runner's input for ``spec`` and the lineage ids it trains from.

    Everything comes from the spec: its input stages (``inputs[0]`` is the starting checkpoint; a
    fusion stage merges the rest onto it; a stage with none starts from the preset's ``vision_init`` /
    ``llm_init`` directories, or random weights), its reward model's stage, and ``data`` (the shards of
    its mix; None for a stage that trains on no data).
    """
    missing = [
        name for name in (*spec.inputs, *([spec.reward_model] if spec.reward_model else [])) if name not in checkpoints
    ]
    if missing:
        raise ValueError(
            f"stage {spec.name} starts from {missing}, which have not finished in {layout.root}; "
            f"run them first (e.g. --stages {' '.join(missing)} {spec.name})"
        )
    inputs = [checkpoints[name] for name in spec.inputs]
    config = RunConfig(
        stage=spec,
        output_dir=layout.stage_dir(spec.name),
        tokenizer_dir=layout.tokenizer_dir,
        init_checkpoint=inputs[0].checkpoint_dir if inputs else None,
        expert_checkpoints=tuple(c.checkpoint_dir for c in inputs[1:]) if spec.fusion else (),
        shards=data.paths if data else (),
        model_preset=preset.model,
        vision_init=None if inputs else preset.vision_init,
        llm_init=None if inputs else preset.llm_init,
        image_min_tokens=preset.image_min_tokens,
        seed=seed,
        shard_sha256s=data.sha256s if data else (),
        shard_num_bytes=data.num_bytes if data else (),
        reward_model_checkpoint=checkpoints[spec.reward_model].checkpoint_dir if spec.reward_model else None,
    )
    lineage_inputs = [*(data.artifact_ids if data else ()), *(c.artifact_id for c in inputs)]
    if spec.reward_model:
        lineage_inputs.append(checkpoints[spec.reward_model].artifact_id)
    return config, lineage_inputs


def train_stage(
    config: RunConfig, launch: LaunchConfig = LaunchConfig(), on_step: Callable[[dict[str, Any]], None] | None = None
) -> StageResult:
    """Run one stage to its final checkpoint, or return the finished stage's result.

    A finished stage is reused only if its inputs are unchanged (``input_fingerprint``); a stage whose
    inputs changed is cleared and trained again, and one that died midway with the same inputs resumes.
    """
    out = Path(config.output_dir)
    stamp = out / "inputs.sha256"
    fingerprint = input_fingerprint(config)
    if stamp.exists() and stamp.read_text() != fingerprint:
        log.info("stage %s: inputs changed since its last run; clearing %s", config.stage.name, out)
        shutil.rmtree(out)
    done = finished_result(out)
    if done is not None:
        log.info("stage %s already finished with these inputs at %s: skipped", config.stage.name, done.checkpoint_dir)
        return done
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(stamp, fingerprint)  # a torn stamp would read as changed inputs and clear the stage
    config_path = out / "run_config.json"  # the launched ranks read it; lineage keeps it for keye replay
    write_text_atomically(config_path, config.to_json())
    if launch.launcher == "inprocess":
        from keye_model.training.runner import run_stage

        return run_stage(config, on_step=on_step)
    run_logged(launch.command(config_path), timeout_s=launch.timeout_s, name=f"stage {config.stage.name}")
    result = finished_result(out)
    if result is None:
        raise RuntimeError(f"stage {config.stage.name}: launcher exited cleanly but wrote no {out / 'result.json'}")
    return result


def run_logged(cmd: Sequence[str], *, timeout_s: float, name: str, env: dict[str, str] | None = None) -> None:
    """Run ``cmd`` in its own process group, every output line into the log; kill the group on timeout."""
    log.info("%s: %s", name, " ".join(cmd))
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    tail: list[str] = []
    errors: list[str] = []  # launchers end with a summary; the ranks' own error lines come earlier

    def pump() -> None:
        for line in proc.stdout:
            line = line.rstrip()
            log.info("[%s] %s", name, line)
            tail.append(line)
            del tail[:-20]
            if "Error" in line or "error:" in line:
                errors.append(line)
                del errors[:-10]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise TimeoutError(f"{name} ran past its {timeout_s:.0f} s limit and was killed") from None
    finally:
        reader.join(timeout=10)
    if rc != 0:
        raise RuntimeError(
            f"{name} failed with exit code {rc}; error lines:\n"
            + "\n".join(errors)
            + "\nlast lines:\n"
            + "\n".join(tail)
        )


# ------------------------------------------------------------------ lineage of a stage


def checkpoint_artifact(result: StageResult, run_id: str) -> Artifact:
    weights = Path(result.checkpoint_dir) / "model.safetensors"
    metadata = {
        "stage": result.stage,
        "steps": result.steps,
        "samples_seen": result.samples_seen,
        "tokens_seen": result.tokens_seen,
        "final_loss": result.final_loss,
    }
    written = Path(result.checkpoint_dir).parent / "result.json"
    extra = json.loads(written.read_text()) if written.exists() else {}
    metadata.update({k: extra[k] for k in ("fusion", "experts") if k in extra})  # what a fusion stage merged
    config_file = Path(result.checkpoint_dir).parent / "run_config.json"
    if config_file.exists():
        metadata.update(replay_metadata(RunConfig.from_json(config_file.read_text())))
    sha256 = extra.get("weights_sha256")
    if sha256 is None:  # hashed once (16 GB at 8B), then kept beside the result for every later lookup
        digest = hashlib.sha256()
        with weights.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        sha256 = digest.hexdigest()
        if written.exists():
            write_text_atomically(written, json.dumps({**extra, "weights_sha256": sha256}, indent=2))
    return Artifact(
        kind="checkpoint",
        uri=str(Path(result.checkpoint_dir).resolve()),
        sha256=sha256,
        num_bytes=weights.stat().st_size,
        created_by_run=run_id,
        metadata=metadata,
    )


def replay_metadata(config: RunConfig) -> dict[str, Any]:
    """What ``keye replay`` needs to train a stage again (``tasks.replay``): its run config, with the paths
    inside the run folder (``<run>/stages/<stage>`` is ``output_dir``) relative to it, so the config can be
    re-rooted in another folder; and the sha256 of each file of its tokenizer."""
    root = Path(config.output_dir).resolve().parents[1]

    def rel(path: str | None) -> str | None:
        resolved = Path(path).resolve() if path else None
        return str(resolved.relative_to(root)) if resolved and resolved.is_relative_to(root) else path

    data = json.loads(config.to_json())
    for key in ("output_dir", "tokenizer_dir", "init_checkpoint", "reward_model_checkpoint", "vision_init", "llm_init"):
        data[key] = rel(data[key])
    for key in ("shards", "expert_checkpoints"):
        data[key] = [rel(p) for p in data[key]]
    tokenizer = {}  # stays empty for a folder moved since the stage ran: replay then names what is missing
    for file in sorted(Path(config.tokenizer_dir).iterdir()) if Path(config.tokenizer_dir).is_dir() else ():
        if file.is_file():
            with file.open("rb") as f:
                tokenizer[file.name] = hashlib.file_digest(f, "sha256").hexdigest()
    return {"run_config": data, "tokenizer_sha256s": tokenizer}


def stage_lineage(
    result: StageResult, run_id: str, inputs: Sequence[str]
) -> tuple[list[Artifact], list[Edge], list[Metric]]:
    """The checkpoint artifact, edges from its inputs (artifact ids), and the stage's per-step metrics."""
    ckpt = checkpoint_artifact(result, run_id)
    edges = [
        Edge(parent_id=parent, child_id=ckpt.artifact_id, run_id=run_id, relation="trained_from") for parent in inputs
    ]
    metrics = []
    metrics_file = Path(result.checkpoint_dir).parent / "metrics.jsonl"
    if metrics_file.exists():
        for line in metrics_file.read_text().splitlines():
            row = json.loads(line)
            metrics += [
                Metric(run_id=run_id, stage=result.stage, step=row["step"], name=k, value=float(v))
                for k, v in row.items()
                if k not in ("stage", "step") and isinstance(v, (int, float))
            ]
    return [ckpt], edges, metrics


def record_stage_lineage(lineage_db: str, result: StageResult, run_id: str, inputs: Sequence[str]) -> str:
    """Record a finished stage's checkpoint, edges and metrics unless already recorded; returns its artifact id.

    The checkpoint's id is content-addressed (a retrained stage is a new artifact), so "already recorded"
    means this very checkpoint was recorded with its edges and metrics (one transaction) by an earlier
    run: a rerun that skips the finished stage must not add its metrics and edges again under its own id.
    """
    artifacts, edges, metrics = stage_lineage(result, run_id, inputs)

    def write(store: LineageStore) -> None:
        if store.has_artifact(artifacts[0].artifact_id):
            log.info("stage %s: checkpoint %s already in lineage", result.stage, artifacts[0].artifact_id)
            return
        store.record_together(artifacts=artifacts, edges=edges, metrics=metrics)

    write_retrying(lineage_db, write)
    return artifacts[0].artifact_id


# ------------------------------------------------------------------ Prefect entry point


@task(name="train-stage", task_run_name="train-{config.stage.name}")
def train_stage_task(config: RunConfig, launch: LaunchConfig, lineage_db: str, inputs: list[str]) -> CheckpointRef:
    """Train (or skip a finished) stage and record its checkpoint, edges and metrics; UI progress per step."""
    stage = config.stage
    progress_id = create_progress_artifact(
        0.0,
        key=key_safe(f"progress-{stage.name}"),
        description=f"stage {stage.name}: share of {stage.num_steps} steps done",
    )

    def on_step(record: dict[str, Any]) -> None:
        update_progress_artifact(progress_id, 100.0 * record["step"] / stage.num_steps)

    if launch.gpu_limit:
        with concurrency(launch.gpu_limit, occupy=launch.num_processes * launch.num_nodes):
            result = train_stage(config, launch, on_step=on_step)
    else:
        result = train_stage(config, launch, on_step=on_step)
    update_progress_artifact(progress_id, 100.0)
    checkpoint_id = record_stage_lineage(lineage_db, result, str(flow_run.id or "local"), inputs)
    return CheckpointRef(stage=stage.name, checkpoint_dir=result.checkpoint_dir, artifact_id=checkpoint_id)


@task(name="prepare-tokenizer")
def prepare_tokenizer(tokenizer_dir: str, source_dir: str | None = None) -> str:
    """The run's tokenizer: a local one copied in (``source_dir``, a preset's ``tokenizer_dir``), or
    the small byte-level BPE trained here when the preset names none."""
    from keye_model.tokenizer import load_tokenizer, tiny_tokenizer

    if source_dir:
        if not Path(source_dir).is_dir():
            raise ValueError(f"tokenizer directory {source_dir} does not exist")
        load_tokenizer(source_dir).save_pretrained(tokenizer_dir)
    else:
        tiny_tokenizer(tokenizer_dir)
    return tokenizer_dir
