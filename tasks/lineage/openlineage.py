"""Export a recorded run as OpenLineage RunEvents (spec 2-0-2), for Marquez or any OpenLineage consumer.

A flow run becomes a START event at ``started_at`` and, once it ended, a COMPLETE / FAIL / ABORT event
at ``ended_at``. Inputs are artifacts its edges read that it did not make; outputs are artifacts it made.
Each task run becomes its own job ``<flow>.<task>`` whose ``parent`` facet points at the flow run, and a
subflow's ``parent`` facet points at its parent flow run. Per-sample artifacts (kind ``record``) are
left out by default: OpenLineage datasets are tables and files, not rows.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlsplit

import duckdb

from tasks.lineage.queries import run_row

SCHEMA_URL = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
#: A URN is a valid producer URI without claiming a web address this project does not own.
PRODUCER = "urn:keye-pipeline:lineage"
FINAL_EVENT = {"COMPLETED": "COMPLETE", "FAILED": "FAIL", "CRASHED": "FAIL", "CANCELLED": "ABORT"}
_FACET = "https://openlineage.io/spec/facets"
PARENT_SCHEMA = f"{_FACET}/1-1-0/ParentRunFacet.json#/$defs/ParentRunFacet"
JOB_TYPE_SCHEMA = f"{_FACET}/2-0-3/JobTypeJobFacet.json#/$defs/JobTypeJobFacet"
VERSION_SCHEMA = f"{_FACET}/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet"
OUTPUT_STATS_SCHEMA = (
    f"{_FACET}/1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet"
)
KEYE_FACET_SCHEMA = "urn:keye-pipeline:facets:1"


def ol_run_id(run_id: str) -> str:
    """OpenLineage wants a UUID: Prefect run ids already are; any other id maps to a stable uuid5."""
    try:
        return str(uuid.UUID(run_id))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"keye-run:{run_id}"))


def dataset_name(uri: str) -> tuple[str, str]:
    """(namespace, name) of a URI per OpenLineage naming.

    ``s3://bucket/a/b`` -> (``s3://bucket``, ``a/b``); ``file:///runs/x.tar`` or ``/runs/x.tar`` ->
    (``file``, ``/runs/x.tar``); ``record://easy-vqa/q1`` -> (``record://easy-vqa``, ``q1``).
    """
    parts = urlsplit(uri)
    if not parts.scheme or parts.scheme == "file":
        return "file", parts.path or uri
    return f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/") or parts.netloc


def _facet(schema_url: str, producer: str, **fields: Any) -> dict[str, Any]:
    return {"_producer": producer, "_schemaURL": schema_url, **fields}


def _dataset(row: dict[str, Any], producer: str, *, output: bool) -> dict[str, Any]:
    namespace, name = dataset_name(row["uri"])
    facets: dict[str, Any] = {
        "keye_artifact": _facet(
            KEYE_FACET_SCHEMA,
            producer,
            artifactId=row["artifact_id"],
            kind=row["kind"],
            sizeBytes=row["num_bytes"],
            numRecords=row["num_records"],
            metadata=json.loads(row["metadata"]) if row["metadata"] else {},
        ),
    }
    if row["sha256"]:
        facets["version"] = _facet(VERSION_SCHEMA, producer, datasetVersion=row["sha256"])
    dataset = {"namespace": namespace, "name": name, "facets": facets}
    if output:
        stats = {k: v for k, v in (("rowCount", row["num_records"]), ("size", row["num_bytes"])) if v is not None}
        dataset["outputFacets"] = {"outputStatistics": _facet(OUTPUT_STATS_SCHEMA, producer, **stats)} if stats else {}
    else:
        dataset["inputFacets"] = {}
    return dataset


def _artifacts(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cur = con.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _events(
    *,
    run_id: str,
    job_name: str,
    namespace: str,
    job_type: str,
    started_at: Any,
    ended_at: Any,
    status: str,
    run_facets: dict[str, Any],
    inputs: list[dict],
    outputs: list[dict],
    producer: str,
) -> list[dict[str, Any]]:
    job = {
        "namespace": namespace,
        "name": job_name,
        "facets": {
            "jobType": _facet(
                JOB_TYPE_SCHEMA, producer, processingType="BATCH", integration="PREFECT", jobType=job_type
            )
        },
    }
    run = {"runId": ol_run_id(run_id), "facets": run_facets}
    base = {"run": run, "job": job, "producer": producer, "schemaURL": SCHEMA_URL}
    events = [
        {
            "eventType": "START",
            "eventTime": started_at.isoformat() if started_at else None,
            **base,
            "inputs": inputs,
            "outputs": [],
        }
    ]
    if status in FINAL_EVENT and ended_at is not None:
        events.append(
            {
                "eventType": FINAL_EVENT[status],
                "eventTime": ended_at.isoformat(),
                **base,
                "inputs": inputs,
                "outputs": outputs,
            }
        )
    return events


def export(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    *,
    namespace: str = "keye",
    producer: str = PRODUCER,
    skip_kinds: tuple[str, ...] = ("record",),
    include_tasks: bool = True,
) -> list[dict[str, Any]]:
    """RunEvents for flow run ``run_id`` (START, then COMPLETE/FAIL/ABORT if it ended), then its task runs."""
    run = run_row(con, run_id)
    run_facets: dict[str, Any] = {
        "keye_run": _facet(
            KEYE_FACET_SCHEMA,
            producer,
            flowRunId=run_id,
            codeVersion=run["code_version"],
            parameters=json.loads(run["parameters"]) if run["parameters"] else {},
        ),
    }
    if run["parent_run_id"]:
        parent = (
            run_row(con, run["parent_run_id"])
            if con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run["parent_run_id"]]).fetchone()
            else None
        )
        run_facets["parent"] = _facet(
            PARENT_SCHEMA,
            producer,
            run={"runId": ol_run_id(run["parent_run_id"])},
            job={"namespace": namespace, "name": parent["flow_name"] if parent else "unknown"},
        )
    skip = list(skip_kinds)
    outputs = _artifacts(
        con,
        """
        SELECT * FROM artifacts WHERE created_by_run = ? AND NOT list_contains(?, kind) ORDER BY uri
    """,
        [run_id, skip],
    )
    inputs = _artifacts(
        con,
        """
        SELECT * FROM artifacts a
        WHERE a.artifact_id IN (SELECT parent_id FROM edges WHERE run_id = ?)
          AND a.created_by_run IS DISTINCT FROM ? AND NOT list_contains(?, a.kind)
        ORDER BY a.uri
    """,
        [run_id, run_id, skip],
    )
    events = _events(
        run_id=run_id,
        job_name=run["flow_name"],
        namespace=namespace,
        job_type="FLOW",
        started_at=run["started_at"],
        ended_at=run["ended_at"],
        status=run["status"],
        run_facets=run_facets,
        inputs=[_dataset(a, producer, output=False) for a in inputs],
        outputs=[_dataset(a, producer, output=True) for a in outputs],
        producer=producer,
    )
    if include_tasks:
        task_parent = _facet(
            PARENT_SCHEMA,
            producer,
            run={"runId": ol_run_id(run_id)},
            job={"namespace": namespace, "name": run["flow_name"]},
        )
        for task_run_id, name, status, started_at, ended_at in con.execute(
            """
            SELECT task_run_id, name, status, started_at, ended_at FROM task_runs WHERE run_id = ?
            ORDER BY started_at, task_run_id
        """,
            [run_id],
        ).fetchall():
            events += _events(
                run_id=task_run_id,
                job_name=f"{run['flow_name']}.{name}",
                namespace=namespace,
                job_type="TASK",
                started_at=started_at,
                ended_at=ended_at,
                status=status,
                run_facets={"parent": task_parent},
                inputs=[],
                outputs=[],
                producer=producer,
            )
    return events
