"""The curate flow: collect sources -> validate (GX, quarantine) -> shard the preset's data mixes -> lineage.

Runnable alone (``prefect deployment run curate/curate``, or ``keye curate``); the pipeline flow calls it
first. Collection fans out one task per source on the flow's task runner (threads by default; a Dask
or Ray runner spreads it over a cluster, see docs/scaling.md).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from data_specs.mixes import get_mix
from data_specs.presets import Preset, as_preset
from tasks.alignment_prompts import mix_records
from tasks.caching import mark_run_folder
from tasks.curation import mix_table, record_curation_lineage, source_table, write_records_jsonl
from tasks.layout import RunLayout
from tasks.lineage.prefect_tasks import record_run_end, record_run_start
from tasks.reports import artifact_key
from tasks.shards import ShardConfig, write_stage_shards
from tasks.sources import SourceSpec, collect_source
from tasks.validate import validate_batch

DEFAULT_SOURCES = ("easy-vqa", "skimage", "scene-videos", "text-instructions")
TASK_RUNNERS = ("thread", "dask")
#: Where a run with no ``run_dir`` puts its folder: ``runs/<flow run name>`` (e.g. runs/crimson-fox), so two
#: deployment runs never share one (and never reuse ``make demo``'s runs/demo).
RUNS_ROOT = "runs"


def run_dir_or_default(run_dir: str | None) -> str:
    """``run_dir``, or a new folder named after this flow run when it is None."""
    if run_dir:
        return run_dir
    name = flow_run.name
    if not name:
        raise ValueError("no run_dir given and no flow run to name one after: pass run_dir")
    return str(Path(RUNS_ROOT) / name)


@flow(name="curate")
def curate(
    run_dir: str | None = None,
    preset: Preset | str = "tiny",
    sources: list[str] | None = None,
    local_folder: str | None = None,
    records_per_source: int | None = None,
    mixes: list[str] | None = None,
    seed: int = 0,
    reuse: bool = True,
    local_folder_limit: int | None = None,
) -> dict[str, str]:
    """Curated, validated, sharded data for each data mix the preset's stages train on (``mixes``: these
    instead); returns the manifest of each mix.

    ``run_dir`` None makes a new folder ``runs/<flow run name>``. With ``reuse`` a run folder whose records
    and every manifest exist is not curated again.
    ``records_per_source`` bounds packaged sources (None: the preset's sizes); ``local_folder`` is read
    whole unless ``local_folder_limit``.
    """
    preset = as_preset(preset)
    run_dir = run_dir_or_default(run_dir)
    layout = RunLayout(run_dir)
    mark_run_folder(layout.root)
    record_run_start(layout.lineage_db)
    wanted = mixes or preset.curated_mixes()
    existing = {name: Path(layout.shards_dir) / name / "manifest.json" for name in wanted}
    if reuse and Path(layout.records_path).exists() and all(p.exists() for p in existing.values()):
        get_run_logger().info("curated data already in %s: reused (reuse=False curates again)", layout.root)
        record_run_end(layout.lineage_db)
        return {name: str(p) for name, p in existing.items()}
    names = list(sources or DEFAULT_SOURCES) + (["local-folder"] if local_folder else [])
    specs = [
        SourceSpec(
            name=name,
            limit=records_per_source or preset.records_for(name),
            seed=seed,
            root=local_folder if name == "local-folder" else None,
            folder_limit=local_folder_limit,
            max_side_px=preset.max_side_px,
        )
        for name in names
    ]
    collected = {
        spec.name: future.result()
        for spec, future in zip(specs, [collect_source.submit(s, layout.data_dir) for s in specs])
    }
    records = [r for c in collected.values() for r in c.records]
    rejected = [r for c in collected.values() for r in c.rejected]
    # quote(): tens of thousands of records per call; Prefect would walk every one looking for futures
    report = validate_batch(quote(records), layout.quarantine_path, quote(rejected))
    write_records_jsonl(report.passed, layout.records_path)

    slow_fast = preset.slow_fast
    futures = [
        write_stage_shards.submit(
            quote(mix_records(name, report.passed, seed, preset.instructed_share)),
            get_mix(name),
            ShardConfig(
                mix=name,
                out_dir=layout.shards_dir,
                slow_fast=slow_fast,
                image_min_tokens=preset.image_min_tokens,
                target_tokens=preset.mix_target_tokens(name),
                seed=seed,
            ),
        )
        for name in wanted
    ]
    shards = [f.result() for f in futures]
    record_curation_lineage(
        layout.lineage_db,
        str(flow_run.id),
        quote({k: v.records for k, v in collected.items()}),
        quote(report),
        quote(shards),
        {k: v.num_dropped for k, v in collected.items()},
    )
    create_table_artifact(
        source_table(collected, report),
        key=artifact_key("sources", run_dir),
        description="Sources: records collected, left unread by a limit (records_dropped), quarantined, passed",
    )
    for mix_shards in shards:
        create_table_artifact(
            mix_table(mix_shards),
            key=artifact_key(f"mix-{mix_shards.mix}", run_dir),
            description=f"Data mix `{mix_shards.mix}`: planned vs realized shares",
        )
    record_run_end(layout.lineage_db)
    return {s.mix: s.manifest_path for s in shards}


def curate_on(task_runner: str = "thread"):
    """The curate flow on a task runner: ``thread`` (this process) or ``dask`` (a Dask cluster at
    ``PREFECT_DASK_ADDRESS``, or a local one when unset).

    Dask needs a running Prefect server named by ``PREFECT_API_URL`` in the environment or the profile:
    without one each Dask worker process would start a temporary server of its own (port races, task
    runs the flow's server never sees), so that case is refused.
    """
    if task_runner not in TASK_RUNNERS:
        raise ValueError(f"task runner {task_runner!r} not in {TASK_RUNNERS}")
    if task_runner == "thread":
        return curate
    import os

    from prefect.context import get_settings_context

    profile = {getattr(k, "name", str(k)): v for k, v in get_settings_context().profile.settings.items()}
    if not (os.environ.get("PREFECT_API_URL") or profile.get("PREFECT_API_URL")):
        raise ValueError(
            "the dask task runner needs a running Prefect server: start one (prefect server start) and set "
            "PREFECT_API_URL (prefect config set PREFECT_API_URL=http://HOST:4200/api); see docs/deploy.md"
        )

    from prefect_dask import DaskTaskRunner

    address = os.environ.get("PREFECT_DASK_ADDRESS")
    return curate.with_options(task_runner=DaskTaskRunner(address=address) if address else DaskTaskRunner())
