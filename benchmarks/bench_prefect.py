"""Prefect's share: the curate flow vs the same plain functions called directly, in one run.

Both do the real work (collect the packaged sources, validate with GX, shard every data mix, write
lineage) into separate run folders. Prefect's local server is started by a warm-up flow first, since
its one-off start is not per-run overhead. Last line: ``ratio: X`` (flow / direct).

    python benchmarks/bench_prefect.py [--records-per-source 16]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records-per-source", type=int, default=16)
    args = parser.parse_args()
    from prefect import flow

    from flows.curate import curate

    @flow
    def warm_up() -> None:
        pass

    warm_up()
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
