"""Lineage: runs, artifacts, what was made from what, data mix, metrics and reviews, in one DuckDB file.

Plain Python over DuckDB; Prefect entry points live in ``tasks.lineage.prefect_tasks`` (imported on
demand so the store and the CLI do not load Prefect).
"""

from tasks.lineage.openlineage import dataset_name, ol_run_id
from tasks.lineage.queries import LineageNode, MixLine, MixReport, RunSummary
from tasks.lineage.records import (
    ARTIFACT_KINDS,
    REVIEW_DECISIONS,
    RUN_STATUSES,
    Artifact,
    Edge,
    Metric,
    MixRow,
    Review,
    Run,
    TaskRun,
    artifact_id,
)
from tasks.lineage.schema import TABLES
from tasks.lineage.store import LineageLockedError, LineageStore

__all__ = [
    "ARTIFACT_KINDS",
    "REVIEW_DECISIONS",
    "RUN_STATUSES",
    "TABLES",
    "Artifact",
    "Edge",
    "LineageLockedError",
    "LineageNode",
    "LineageStore",
    "Metric",
    "MixLine",
    "MixReport",
    "MixRow",
    "Review",
    "Run",
    "RunSummary",
    "TaskRun",
    "artifact_id",
    "dataset_name",
    "ol_run_id",
]
