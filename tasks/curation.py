"""Lineage of curation: sources -> records -> shards (and manifests), quarantine counts, data mixes.

Plain functions that turn what the curation tasks returned into lineage rows; the flow hands them to
the one writer. Every record is its own artifact so that the ancestry of any shard reaches the exact
source records it holds (bulk inserts make that cheap: >1M rows/s).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task

from data_specs.schemas import Record
from tasks.alignment_prompts import source_record_id
from tasks.lineage import Artifact, Edge, LineageStore, Metric, MixRow
from tasks.shards import StageShards
from tasks.sources.spec import Collected
from tasks.validate import ValidationReport


@dataclass
class LineageBatch:
    artifacts: list[Artifact] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    mix: list[MixRow] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)

    def write(self, store: LineageStore) -> None:
        store.record_artifacts(self.artifacts)
        store.record_edges(self.edges)
        store.record_mix(self.mix)
        store.record_metrics(self.metrics)


def source_artifact(name: str, run_id: str, metadata: dict | None = None) -> Artifact:
    return Artifact(kind="source", uri=f"source://{name}", created_by_run=run_id, metadata=metadata or {})


def record_artifact(record: Record, run_id: str) -> Artifact:
    text = record.to_json()
    return Artifact(
        kind="record",
        uri=f"record://{record.source}/{record.id}",
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        num_records=1,
        created_by_run=run_id,
        metadata={"modality": record.modality, "task": record.task, "media_path": record.media_path},
    )


def shard_artifact(info, mix: str, run_id: str) -> Artifact:
    return Artifact(
        kind="shard",
        uri=str(Path(info.path).resolve()),
        sha256=info.sha256,
        num_bytes=info.num_bytes,
        num_records=info.num_records,
        created_by_run=run_id,
        metadata={"mix": mix, "tokens": info.tokens, "modality_counts": info.modality_counts},
    )


def collection_lineage(
    run_id: str,
    records_by_source: Mapping[str, Sequence[Record]],
    report: ValidationReport,
    dropped_by_source: Mapping[str, int] | None = None,
) -> LineageBatch:
    """Sources, their records (source -> record), and the quarantine file with its counts.

    ``dropped_by_source``: items a limit left unread per source (``Collected.num_dropped``), kept as the
    metrics ``records_dropped`` (all sources) and ``records_dropped/<source>``, and on the source artifact.
    """
    dropped = dict(dropped_by_source or {})
    batch = LineageBatch()
    for name, records in records_by_source.items():
        source = source_artifact(name, run_id, {"records_dropped": dropped.get(name, 0)})
        batch.artifacts.append(source)
        for record in records:
            art = record_artifact(record, run_id)
            batch.artifacts.append(art)
            batch.edges.append(
                Edge(parent_id=source.artifact_id, child_id=art.artifact_id, run_id=run_id, relation="collected_from")
            )
    if Path(report.quarantine_path).exists():
        batch.artifacts.append(
            Artifact(
                kind="report",
                uri=str(Path(report.quarantine_path).resolve()),
                num_records=report.num_quarantined,
                created_by_run=run_id,
                metadata={"reasons": report.reasons},
            )
        )
    batch.metrics += [
        Metric(run_id=run_id, stage="curate", step=0, name="records_checked", value=report.num_checked),
        Metric(run_id=run_id, stage="curate", step=0, name="records_quarantined", value=report.num_quarantined),
        Metric(run_id=run_id, stage="curate", step=0, name="records_passed", value=len(report.passed)),
        Metric(run_id=run_id, stage="curate", step=0, name="records_dropped", value=sum(dropped.values())),
        *(
            Metric(run_id=run_id, stage="curate", step=0, name=f"records_dropped/{name}", value=dropped.get(name, 0))
            for name in records_by_source
        ),
    ]
    return batch


def shard_lineage(run_id: str, shards: StageShards, records: Sequence[Record]) -> LineageBatch:
    """Shards and manifest of one data mix: record -> shard edges (an instructed SFT variant's edge starts at
    the record it was made from), and planned vs realized mix rows."""
    batch = LineageBatch()
    by_id = {r.id: r for r in records}
    manifest = Artifact(
        kind="manifest",
        uri=str(Path(shards.manifest_path).resolve()),
        sha256=hashlib.sha256(Path(shards.manifest_path).read_bytes()).hexdigest(),
        num_records=shards.num_records,
        created_by_run=run_id,
        metadata={"mix": shards.mix, "planned": shards.planned, "realized": shards.realized},
    )
    batch.artifacts.append(manifest)
    total_samples = sum(s.num_records for s in shards.shards) or 1
    for info in shards.shards:
        shard = shard_artifact(info, shards.mix, run_id)
        batch.artifacts.append(shard)
        batch.edges.append(
            Edge(parent_id=shard.artifact_id, child_id=manifest.artifact_id, run_id=run_id, relation="listed_in")
        )
        for record_id in sorted(set(info.record_ids)):
            batch.edges.append(
                Edge(
                    parent_id=record_artifact(by_id[source_record_id(record_id)], run_id).artifact_id,
                    child_id=shard.artifact_id,
                    run_id=run_id,
                    relation="sharded_into",
                )
            )
        for modality, count in info.modality_counts.items():
            tokens = info.modality_tokens.get(modality, 0)
            batch.mix.append(
                MixRow(
                    run_id=run_id,
                    mix=shards.mix,
                    shard_id=shard.artifact_id,
                    source="*",
                    modality=modality,
                    planned_ratio=shards.planned.get(modality, 0.0),
                    realized_ratio_samples=count / max(1, info.num_records),
                    realized_ratio_tokens=tokens / max(1, info.tokens),
                    num_samples=count,
                    num_tokens=tokens,
                )
            )
    for modality in sorted(set(shards.planned) | set(shards.realized)):
        if "/" in modality:
            continue
        count = sum(s.modality_counts.get(modality, 0) for s in shards.shards)
        tokens = sum(s.modality_tokens.get(modality, 0) for s in shards.shards)
        batch.mix.append(
            MixRow(
                run_id=run_id,
                mix=shards.mix,
                source="*",
                modality=modality,
                planned_ratio=shards.planned.get(modality, 0.0),
                realized_ratio_samples=count / total_samples,
                realized_ratio_tokens=shards.realized.get(modality, 0.0),
                num_samples=count,
                num_tokens=tokens,
            )
        )
    return batch


def mix_table(shards: StageShards) -> list[dict]:
    """Planned vs realized token shares of one mix, for a UI table."""
    total_samples = sum(s.num_records for s in shards.shards) or 1
    rows = []
    for key in sorted(set(shards.planned) | set(shards.realized)):
        count = sum(s.modality_counts.get(key, 0) for s in shards.shards)
        rows.append(
            {
                "part": key,
                "planned": round(shards.planned.get(key, 0.0), 4),
                "realized_by_tokens": round(shards.realized.get(key, 0.0), 4),
                "realized_by_samples": round(count / total_samples, 4) if "/" not in key else None,
            }
        )
    return rows


def source_table(collected: Mapping[str, Collected], report: ValidationReport) -> list[dict]:
    """Per source, for a UI table beside the mix tables: records collected, inputs it could not turn into
    records (``inputs_rejected``), items a limit left unread (``records_dropped``: a user's folder read
    with ``folder_limit``), and how many of its records validation quarantined and passed."""
    passed = Counter(r.source for r in report.passed)
    return [
        {
            "source": name,
            "records_collected": len(c.records),
            "inputs_rejected": len(c.rejected),
            "records_dropped": c.num_dropped,
            "records_quarantined": len(c.records) - passed.get(name, 0),
            "records_passed": passed.get(name, 0),
        }
        for name, c in collected.items()
    ]


@task(name="record-curation-lineage", retries=2, retry_delay_seconds=5)
def record_curation_lineage(
    lineage_db: str,
    run_id: str,
    records_by_source: dict[str, list[Record]],
    report: ValidationReport,
    shards: list[StageShards],
    dropped_by_source: dict[str, int] | None = None,
) -> dict[str, int]:
    """Write the curation graph in one go (the flow process is the one writer)."""
    batch = collection_lineage(run_id, records_by_source, report, dropped_by_source)
    for mix_shards in shards:
        part = shard_lineage(run_id, mix_shards, report.passed)
        batch.artifacts += part.artifacts
        batch.edges += part.edges
        batch.mix += part.mix
    with LineageStore(lineage_db) as store:
        batch.write(store)
    return {"artifacts": len(batch.artifacts), "edges": len(batch.edges), "mix_rows": len(batch.mix)}


def write_records_jsonl(records: Sequence[Record], path: str | Path) -> str:
    """The validated records as JSONL: the input of the LongCoT chain and of evaluation."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_text("".join(json.dumps(json.loads(r.to_json())) + "\n" for r in records))
    tmp.replace(path)
    return str(path)
