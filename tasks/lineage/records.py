"""What the lineage store records: one frozen dataclass per row kind, validated where it is made.

Every write path of ``LineageStore`` takes lists of these (or DataFrames with the same column names).
Ids that must be stable across re-runs (artifacts, reviews) are derived from content, so writing the same
thing twice names the same row and adds nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

#: Prefect state types a flow or task run can end in (plus RUNNING / PENDING while it goes).
RUN_STATUSES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "CRASHED")
#: What an artifact is. ``record`` is one curated sample; the rest are files or directories.
ARTIFACT_KINDS = (
    "source",
    "record",
    "dataset",
    "shard",
    "manifest",
    "pair",
    "checkpoint",
    "report",
    "eval",
)
REVIEW_DECISIONS = ("approve", "edit", "reject")
#: Edge relations are short snake_case verbs ("made_from", "filtered_from", "trained_on", ...).
RELATION_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """Aware datetimes are converted to UTC; naive ones are taken to be UTC already."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def artifact_id(kind: str, uri: str, sha256: str | None = None) -> str:
    """Deterministic artifact id: ``<kind>:<first 24 hex of sha256(kind, uri, content sha)>``.

    With a content hash the id names one version of what lies at ``uri``; without one it names the
    location. Example: ``artifact_id("shard", "file:///runs/s/000.tar", "ab12")`` is always the same
    ``shard:...`` string, in every process and run.
    """
    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"artifact {uri!r}: kind {kind!r} not in {ARTIFACT_KINDS}")
    if not uri:
        raise ValueError(f"artifact of kind {kind!r} has an empty uri")
    digest = hashlib.sha256(f"{kind}\n{uri}\n{sha256 or ''}".encode()).hexdigest()
    return f"{kind}:{digest[:24]}"


def _check_status(what: str, status: str) -> None:
    if status not in RUN_STATUSES:
        raise ValueError(f"{what}: status {status!r} not in {RUN_STATUSES}")


@dataclass(frozen=True, kw_only=True)
class Run:
    """One flow run (the Prefect flow run id is the run id)."""

    run_id: str
    """Prefect flow run id (a UUID string), or any unique id outside Prefect."""
    flow_name: str
    """Name of the flow (``curate``, ``pretrain``, ``keye`` ...)."""
    parameters: dict[str, Any] = field(default_factory=dict)
    """The flow's parameters, JSON-serializable."""
    code_version: str | None = None
    """``git describe`` of the checkout, else the package version (see ``code_version()``)."""
    started_at: dt.datetime = field(default_factory=utc_now)
    """When the run started; the earliest value written wins (a retry keeps the first start)."""
    ended_at: dt.datetime | None = None
    """When the run reached a final state; None while it runs."""
    status: str = "RUNNING"
    """One of RUN_STATUSES."""
    parent_run_id: str | None = None
    """The flow run this one is a subflow of (the phase flows under ``keye``), else None."""
    run_name: str | None = None
    """Prefect's name of the flow run, as its UI lists it (``tangerine-bear``); None outside Prefect."""
    root_run_id: str | None = None
    """The top-level flow run of the tree this run belongs to (its own id for a top-level run); None when
    unknown. The run id Prefect's UI shows for a deployment run is this one."""
    host: str | None = None
    """Host name of the process the flow runs in; with ``pid``, how a later run tells a dead one from a live one."""
    pid: int | None = None
    """Process id of the flow run's process on ``host``; None when unknown."""

    def __post_init__(self) -> None:
        if not self.run_id or not self.flow_name:
            raise ValueError(f"run {self.run_id!r} of flow {self.flow_name!r}: both must be non-empty")
        _check_status(f"run {self.run_id}", self.status)


@dataclass(frozen=True, kw_only=True)
class TaskRun:
    """One task run inside a flow run."""

    task_run_id: str
    """Prefect task run id."""
    run_id: str
    """The flow run it belongs to."""
    name: str
    """Task name (``validate_records``, ``write_shards`` ...)."""
    status: str = "RUNNING"
    """One of RUN_STATUSES."""
    started_at: dt.datetime = field(default_factory=utc_now)
    """When the task run started; the earliest value written wins."""
    ended_at: dt.datetime | None = None
    """When it reached a final state; None while it runs."""

    def __post_init__(self) -> None:
        if not self.task_run_id or not self.run_id or not self.name:
            raise ValueError(
                f"task run {self.task_run_id!r} ({self.name!r}) in run {self.run_id!r}: ids and name must be non-empty"
            )
        _check_status(f"task run {self.task_run_id}", self.status)


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """Something a run read or made: a source, a record, a dataset, a shard, a checkpoint, a report."""

    kind: str
    """One of ARTIFACT_KINDS."""
    uri: str
    """Where it lives (``file:///...``, ``s3://...``, ``record://<source>/<id>``)."""
    sha256: str | None = None
    """Content hash; part of the id when given, so a changed file is a new artifact."""
    num_bytes: int | None = None
    """Size on disk."""
    num_records: int | None = None
    """Samples inside (records in a dataset or shard); 1 for a record."""
    created_by_run: str | None = None
    """Run that made it; None for external inputs (raw sources). The first writer keeps it."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Kind-specific extras, JSON-serializable (``{"mix": "annealing"}``, ``{"step": 1200}``)."""
    created_at: dt.datetime = field(default_factory=utc_now)
    """When it was recorded."""
    artifact_id: str = ""
    """Leave empty: derived from (kind, uri, sha256) by ``artifact_id()``."""

    def __post_init__(self) -> None:
        derived = artifact_id(self.kind, self.uri, self.sha256)
        if self.artifact_id and self.artifact_id != derived:
            raise ValueError(f"artifact {self.uri!r}: id {self.artifact_id!r} != derived {derived!r}")
        object.__setattr__(self, "artifact_id", derived)


@dataclass(frozen=True, kw_only=True)
class Edge:
    """``child`` was made from ``parent`` by run ``run_id``."""

    parent_id: str
    """Artifact id of the input."""
    child_id: str
    """Artifact id of the output."""
    run_id: str
    """Run that made the child from the parent."""
    relation: str = "made_from"
    """How: ``made_from``, ``filtered_from``, ``sharded_from``, ``trained_on`` ... (snake_case)."""

    def __post_init__(self) -> None:
        if not self.parent_id or not self.child_id or not self.run_id:
            raise ValueError(
                f"edge {self.parent_id!r} -> {self.child_id!r} (run {self.run_id!r}): ids must be non-empty"
            )
        if self.parent_id == self.child_id:
            raise ValueError(f"edge {self.parent_id!r} -> itself: an artifact cannot be made from itself")
        if not RELATION_PATTERN.match(self.relation):
            raise ValueError(
                f"edge {self.parent_id} -> {self.child_id}: relation {self.relation!r} "
                f"must match {RELATION_PATTERN.pattern}"
            )


@dataclass(frozen=True, kw_only=True)
class MixRow:
    """Planned vs realized share of one (source, modality) in a data mix, for one shard or the mix total."""

    run_id: str
    """Run that wrote the shards."""
    mix: str
    """Data mix name (``image_text``, ``annealing`` ...; ``StageSpec.data_mix`` names a stage's)."""
    source: str
    """Source adapter name."""
    modality: str
    """``image``, ``video`` or ``text``."""
    planned_ratio: float
    """Share of TOKENS the data mix asked for, in [0, 1] (mixes are planned in tokens)."""
    realized_ratio_samples: float
    """Share of samples actually written, in [0, 1]."""
    realized_ratio_tokens: float
    """Share of tokens actually written, in [0, 1]."""
    num_samples: int
    """Samples of this (source, modality) written."""
    num_tokens: int
    """Tokens of this (source, modality) written."""
    shard_id: str | None = None
    """Artifact id of the shard, or None for the mix total."""

    def __post_init__(self) -> None:
        where = f"mix row run {self.run_id} mix {self.mix} source {self.source} shard {self.shard_id}"
        for name in ("planned_ratio", "realized_ratio_samples", "realized_ratio_tokens"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{where}: {name}={value} not in [0, 1]")
        if self.num_samples < 0 or self.num_tokens < 0:
            raise ValueError(f"{where}: negative counts {self.num_samples}, {self.num_tokens}")


@dataclass(frozen=True, kw_only=True)
class Metric:
    """One scalar of a run at a step (loss, accuracy, reward ...)."""

    run_id: str
    """Run that measured it."""
    stage: str
    """Stage (``stage1``, ``sft``, ``eval`` ...)."""
    step: int
    """Optimizer step, or 0 for a once-per-stage value."""
    name: str
    """Metric name (``loss``, ``acc/vqa`` ...)."""
    value: float
    """The value; re-writing the same (run, stage, step, name) replaces it."""


@dataclass(frozen=True, kw_only=True)
class Review:
    """A review decision on some samples, by a person or by the automatic checks."""

    run_id: str
    """Run whose samples were reviewed."""
    reviewer: str
    """A person's name, or ``auto``."""
    decision: str
    """One of REVIEW_DECISIONS."""
    sample_ids: tuple[str, ...]
    """Record ids the decision covers."""
    note: str = ""
    """Free text (why rejected, what was edited)."""
    reviewed_at: dt.datetime = field(default_factory=utc_now)
    """When the decision was made."""
    review_id: str = ""
    """Leave empty: derived from all the fields above, so the same review written twice is one row."""

    def __post_init__(self) -> None:
        if self.decision not in REVIEW_DECISIONS:
            raise ValueError(
                f"review by {self.reviewer!r} in run {self.run_id}: "
                f"decision {self.decision!r} not in {REVIEW_DECISIONS}"
            )
        if not self.reviewer:
            raise ValueError(f"review in run {self.run_id}: reviewer must be a name or 'auto'")
        object.__setattr__(self, "sample_ids", tuple(self.sample_ids))
        object.__setattr__(self, "reviewed_at", as_utc(self.reviewed_at))
        key = "\n".join(
            [
                self.run_id,
                self.reviewer,
                self.decision,
                ",".join(self.sample_ids),
                self.note,
                self.reviewed_at.isoformat(),
            ]
        )
        object.__setattr__(self, "review_id", "review:" + hashlib.sha256(key.encode()).hexdigest()[:24])
