"""The pipeline flow ``keye`` (deployed as ``keye/full-pipeline``): curate -> pretrain -> posttrain ->
evaluate, each phase a subflow that also runs alone. Re-running after a failure skips what is done:
curation whose manifests exist, and every stage with a final checkpoint; a stage that died midway
resumes from its last DeepSpeed checkpoint.
"""

from __future__ import annotations

from prefect import flow

from flows.curate import curate_on, run_dir_or_default
from flows.evaluate import evaluate
from flows.posttrain import posttrain
from flows.pretrain import pretrain
from tasks.chain_report import chain_metrics
from tasks.evaluation.report import publish_run_summary_task
from tasks.layout import RunLayout
from tasks.lineage.prefect_tasks import record_run_end, record_run_start
from tasks.plan import resolve_run_preset
from tasks.train import training_minutes


@flow(name="keye")
def keye(
    run_dir: str | None = None,
    preset: str = "tiny",
    stages: list[str] | None = None,
    review_mode: str = "auto",
    review_timeout_s: int = 3600,
    sources: list[str] | None = None,
    local_folder: str | None = None,
    records_per_source: int | None = None,
    launcher: str = "inprocess",
    num_processes: int = 1,
    gpu_limit: str | None = None,
    evaluate_stages: list[str] | None = None,
    task_runner: str = "thread",
    seed: int = 0,
    local_folder_limit: int | None = None,
    tokenizer: str | None = None,
    vision_init: str | None = None,
    llm_init: str | None = None,
) -> dict:
    """The whole pipeline in ``run_dir`` (None: a new folder ``runs/<flow run name>``); ``stages`` limits
    training to those stages (all by default); ``task_runner`` is where curation's tasks run (``thread``
    or ``dask``). The preset's name is resolved here, once, with the run's input directories: ``tokenizer``
    (a local tokenizer) and ``vision_init`` / ``llm_init`` (local SigLIP / Qwen3 checkpoints the first stage starts
    from); the phase flows get the ``Preset`` object.
    Ends with a summary artifact on this run (per-stage metrics, checkpoints)."""
    # the run's input directories join the preset here, checked before curation starts
    resolved = resolve_run_preset(preset, tokenizer=tokenizer, vision_init=vision_init, llm_init=llm_init)
    names = {s.name: s.phase for s in resolved.stages}
    unknown = set(stages or ()) - set(names)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; preset {preset!r} has {list(names)}")
    wanted = list(stages or names)
    run_dir = run_dir_or_default(run_dir)
    layout = RunLayout(run_dir)
    record_run_start(layout.lineage_db)  # the run id the Prefect UI shows; the phases are its children
    curated = curate_on(task_runner)(
        run_dir=run_dir,
        preset=resolved,
        sources=sources,
        local_folder=local_folder,
        records_per_source=records_per_source,
        seed=seed,
        local_folder_limit=local_folder_limit,
    )
    train = dict(launcher=launcher, num_processes=num_processes, gpu_limit=gpu_limit, seed=seed)
    pre = [n for n in wanted if names[n] == "pretrain"]
    post = [n for n in wanted if names[n] == "posttrain"]
    checkpoints = {}
    if pre:
        checkpoints.update(pretrain(run_dir=run_dir, preset=resolved, stages_to_run=pre, **train))
    if post:
        checkpoints.update(
            posttrain(
                run_dir=run_dir,
                preset=resolved,
                stages_to_run=post,
                review_mode=review_mode,
                review_timeout_s=review_timeout_s,
                **train,
            )
        )
    metrics = evaluate(run_dir=run_dir, preset=resolved, stages_to_eval=evaluate_stages, seed=seed)
    checkpoint_dirs = {k: v.checkpoint_dir for k, v in checkpoints.items()}
    chain = chain_metrics(layout.posttrain_dir) if post else {}
    minutes = training_minutes(layout)
    publish_run_summary_task(str(layout.root), metrics, checkpoint_dirs, chain, minutes)  # this run's own UI artifact
    record_run_end(layout.lineage_db)
    return {
        "run_dir": str(layout.root),
        "lineage_db": layout.lineage_db,
        "manifests": curated,
        "checkpoints": checkpoint_dirs,
        "evaluation": metrics,
        "chain": chain,
        "training_minutes": minutes,
    }
