"""Prefect's share: the curate flow vs the same plain functions called directly, in one run; with
``--pipeline``, the share of a whole ``keye`` run (tiny preset) spent outside its task runs.

Curate: both sides do the real work (collect the packaged sources, validate with GX, shard every data
mix, write lineage) into separate run folders. Prefect's local server is started by a warm-up flow
first, since its one-off start is not per-run overhead. Last line: ``ratio: X`` (flow / direct).

Pipeline: no plain-function twin of the whole chain exists, so the run's own records answer: every
task run's RUNNING..final interval (from the server) is work inside a task; the rest of the wall time is
Prefect (flow and task run creation, state changes, artifacts, logs to the API) plus the flows' own glue
code between tasks. Intervals of concurrent tasks are merged, so the share is not understated by overlap.
Last line: ``outside tasks: X%``.

    python benchmarks/bench_prefect.py [--records-per-source 16]
    python benchmarks/bench_prefect.py --pipeline [--preset tiny]   # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def direct(run_dir: str, records_per_source: int) -> None:
    """What the curate flow does, as plain calls (the flow's tasks' ``.fn``s in the same order)."""
    from data_specs.mixes import PRESETS, get_mix
    from flows.curate import DEFAULT_SOURCES
    from tasks.caching import mark_run_folder
    from tasks.curation import collection_lineage, shard_lineage, write_records_jsonl
    from tasks.layout import RunLayout
    from tasks.lineage import LineageStore
    from tasks.shards import ShardConfig, shard_stage
    from tasks.sources import SourceSpec, collect_records
    from tasks.validate import validate_records

    layout = RunLayout(run_dir)
    mark_run_folder(layout.root)
    collected = {
        name: collect_records(SourceSpec(name=name, limit=records_per_source), layout.data_dir)
        for name in DEFAULT_SOURCES
    }
    records = [r for c in collected.values() for r in c.records]
    rejected = [r for c in collected.values() for r in c.rejected]
    report = validate_records(records, quarantine_path=layout.quarantine_path, rejected=rejected)
    write_records_jsonl(report.passed, layout.records_path)
    shards = [
        shard_stage(report.passed, get_mix(name), ShardConfig(mix=name, out_dir=layout.shards_dir, slow_fast="tiny"))
        for name in sorted(PRESETS)
    ]
    batch = collection_lineage("direct", {k: v.records for k, v in collected.items()}, report)
    with LineageStore(layout.lineage_db) as store:
        batch.write(store)
        for s in shards:
            shard_lineage("direct", s, report.passed).write(store)


def run_tree(client, top_id) -> tuple[list, list]:
    """The flow runs under ``top_id`` (itself included) and their task runs, less subflows' parent tasks."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    flow_runs, frontier = [client.read_flow_run(top_id)], [top_id]
    while frontier:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier))
        )
        flow_runs += children
        frontier = [c.id for c in children]
    subflow_tasks = {f.parent_task_run_id for f in flow_runs}
    task_runs, offset = [], 0
    while True:
        page = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[f.id for f in flow_runs])), limit=200, offset=offset
        )
        task_runs += [t for t in page if t.id not in subflow_tasks]
        if len(page) < 200:
            return flow_runs, task_runs
        offset += 200


def merged_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``intervals`` (concurrent task runs counted once)."""
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        if hi > end:
            total += hi - max(lo, end)
            end = hi
    return total


def pipeline(preset: str) -> None:
    """One whole ``keye`` run; its wall time split into task runs' work and the rest."""
    from prefect.client.orchestration import get_client

    from flows.keye import keye

    start = time.perf_counter()
    state = keye(run_dir=tempfile.mkdtemp(), preset=preset, return_state=True)
    wall_s = time.perf_counter() - start
    if not state.is_completed():
        raise RuntimeError(f"bench_prefect: the keye flow ended {state.type.value}: {state.message}")
    with get_client(sync_client=True) as client:
        flow_runs, task_runs = run_tree(client, state.state_details.flow_run_id)
    spans = [(t.start_time.timestamp(), t.end_time.timestamp()) for t in task_runs if t.start_time and t.end_time]
    in_tasks_s = merged_seconds(spans)
    longest = sorted(task_runs, key=lambda t: -(t.total_run_time.total_seconds()))[:5]
    print(f"keye --preset {preset}: {wall_s:.1f} s wall, {len(flow_runs)} flow runs, {len(task_runs)} task runs")
    print("longest tasks: " + ", ".join(f"{t.name} {t.total_run_time.total_seconds():.1f} s" for t in longest))
    print(f"inside task runs (merged RUNNING..final intervals): {in_tasks_s:.1f} s")
    print(f"outside: {wall_s - in_tasks_s:.1f} s, {(wall_s - in_tasks_s) / max(len(task_runs), 1):.2f} s per task run")
    print(f"outside tasks: {100 * (wall_s - in_tasks_s) / wall_s:.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records-per-source", type=int, default=16)
    parser.add_argument("--pipeline", action="store_true", help="measure a whole keye run instead of curate")
    parser.add_argument("--preset", default="tiny", help="the pipeline's preset (with --pipeline)")
    args = parser.parse_args()
    from prefect import flow

    from flows.curate import curate

    @flow
    def warm_up() -> None:
        pass

    warm_up()
    if args.pipeline:
        pipeline(args.preset)
        return
    direct(tempfile.mkdtemp(), args.records_per_source)  # warm caches (imports, GX) for both sides
    start = time.perf_counter()
    direct(tempfile.mkdtemp(), args.records_per_source)
    direct_s = time.perf_counter() - start
    start = time.perf_counter()
    curate(run_dir=tempfile.mkdtemp(), records_per_source=args.records_per_source)
    flow_s = time.perf_counter() - start
    print(f"curate as plain functions: {direct_s:.2f} s")
    print(f"curate as a Prefect flow (tasks, artifacts, run records): {flow_s:.2f} s")
    print(f"Prefect overhead: {flow_s - direct_s:+.2f} s ({100 * (flow_s - direct_s) / flow_s:.1f}% of the flow)")
    print(f"ratio: {flow_s / direct_s:.3f}")


if __name__ == "__main__":
    main()
