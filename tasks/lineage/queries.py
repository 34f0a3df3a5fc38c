"""Read-side queries over an open lineage connection: runs, ancestry, descendants, data mix, metrics, reviews.

Ancestry is one recursive CTE that walks ``edges`` a level per iteration. It keeps distinct
(artifact, depth, link) rows, so a diamond (two datasets made from the same source) does not multiply
paths, and reports each artifact once at its shortest distance. Worked example, edges child -> parent:

    shard S -> dataset D1 -> source A          walk from S: (D1, 1) (D2, 1) (A, 2) (B, 2) (A, 2)
    shard S -> dataset D2 -> source A, B       result:       D1 1, D2 1, A 2, B 2   (A once)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from tasks.lineage.records import Metric, Review

log = logging.getLogger(__name__)

#: Deepest walk; guards against a cycle written by mistake (an acyclic pipeline is far shallower).
MAX_DEPTH = 10_000


@dataclass(frozen=True, kw_only=True)
class LineageNode:
    """One artifact in the ancestry (or descendants) of the artifact queried."""

    artifact_id: str
    """Its id."""
    depth: int
    """Shortest number of edges from the queried artifact (1 = direct parent or child)."""
    kind: str | None
    """Artifact kind; None when an edge names an id that was never recorded as an artifact."""
    uri: str | None
    """Where it lives."""
    sha256: str | None
    """Content hash, when known."""
    num_records: int | None
    """Samples inside, when known."""
    created_by_run: str | None
    """Run that made it."""
    via: tuple[str, ...]
    """Ids one step closer to the queried artifact that it is linked to (its children, for ancestry)."""
    relations: tuple[str, ...]
    """Relations on those links (``made_from`` ...)."""


@dataclass(frozen=True, kw_only=True)
class MixLine:
    """Planned vs realized share of one (source, modality) in a data mix."""

    source: str
    """Source adapter name."""
    modality: str
    """``image``, ``video`` or ``text``."""
    planned_ratio: float
    """Share of TOKENS the data mix asked for (mixes are planned in tokens, not samples)."""
    realized_ratio_samples: float
    """Share of samples written."""
    realized_ratio_tokens: float
    """Share of tokens written."""
    num_samples: int
    """Samples written."""
    num_tokens: int
    """Tokens written."""

    @property
    def drift_tokens(self) -> float:
        """Realized minus planned share of tokens, the share the plan is about (positive: over-represented).

        The sample share is no measure of the plan: 3 videos of 100 tokens and 60 images of 5 tokens meet
        a 50/50 token plan exactly while videos are under 5% of the samples."""
        return self.realized_ratio_tokens - self.planned_ratio


@dataclass(frozen=True, kw_only=True)
class MixReport:
    """One data mix as one run wrote it."""

    run_id: str
    """Run whose mix this is (the latest run that recorded the mix, unless asked for one)."""
    mix: str
    """Data mix name."""
    from_shards: bool
    """True when no mix totals were recorded and the lines were summed from per-shard rows."""
    lines: tuple[MixLine, ...]
    """One line per (source, modality), largest planned share first."""


@dataclass(frozen=True, kw_only=True)
class RunSummary:
    """One recorded flow run, as ``keye lineage runs`` lists it."""

    run_id: str
    """Prefect flow run id."""
    flow_name: str
    """Flow (``keye``, ``curate``, ``pretrain`` ...)."""
    run_name: str | None
    """Prefect's name for the run (what its UI lists), when recorded."""
    status: str
    """Last recorded state."""
    started_at: dt.datetime | None
    """Start."""
    ended_at: dt.datetime | None
    """End; None while running (or when the run died without saying so)."""
    parent_run_id: str | None
    """The run it is a subflow of."""
    root_run_id: str | None
    """The top-level run of its tree, when recorded."""


def current_sha256(path: Path) -> str | None:
    """The content hash lineage records for what is at ``path`` now, or None when it cannot be known.

    A file is hashed; a checkpoint folder is named by the ``weights_sha256`` its stage's ``result.json``
    (one folder up) keeps, which is how ``tasks.train`` records checkpoints."""
    if path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    result = path.parent / "result.json"
    if path.is_dir() and result.is_file():
        try:
            return json.loads(result.read_text()).get("weights_sha256")
        except ValueError:
            return None
    return None


def resolve(con: duckdb.DuckDBPyConnection, id_or_uri: str, *, sha256: str | None = None) -> str:
    """The artifact id named by an id or a URI; ValueError when unknown.

    A URI recorded with several contents (a stage retrained in the same run folder) names the version
    whose hash is ``sha256`` (default: the hash of what is at that path now), else the newest recorded.
    """
    if con.execute("SELECT 1 FROM artifacts WHERE artifact_id = ?", [id_or_uri]).fetchone():
        return id_or_uri
    uris = [id_or_uri]
    local = Path(id_or_uri)
    if local.exists():  # a local path in any form: artifacts record the absolute one
        uris.append(str(local.resolve()))
    rows = con.execute(
        "SELECT artifact_id, sha256 FROM artifacts WHERE uri IN (SELECT unnest(?)) "
        "ORDER BY created_at DESC, artifact_id",
        [uris],
    ).fetchall()
    if len(rows) == 1:
        return rows[0][0]
    if rows:
        wanted = sha256 or (current_sha256(local) if local.exists() else None)
        chosen = next((r[0] for r in rows if wanted is not None and r[1] == wanted), rows[0][0])
        log.info("uri %s names %d artifact versions; using %s", id_or_uri, len(rows), chosen)
        return chosen
    if con.execute(
        "SELECT 1 FROM edges WHERE parent_id = ? OR child_id = ? LIMIT 1", [id_or_uri, id_or_uri]
    ).fetchone():
        return id_or_uri  # referenced by edges but never recorded as an artifact
    raise ValueError(f"no artifact with id or uri {id_or_uri!r} in the lineage store")


def _walk(con: duckdb.DuckDBPyConnection, id_or_uri: str, *, upward: bool, max_depth: int) -> list[LineageNode]:
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    start = resolve(con, id_or_uri)
    near, far = ("child_id", "parent_id") if upward else ("parent_id", "child_id")
    # Each step carries the edge it came through, so the links toward the start need no second join.
    rows = con.execute(
        f"""
        WITH RECURSIVE walk(artifact_id, depth, via, relation) AS (
            SELECT ?::VARCHAR, 0, NULL::VARCHAR, NULL::VARCHAR
            UNION
            SELECT e.{far}, w.depth + 1, e.{near}, e.relation
            FROM walk w JOIN edges e ON e.{near} = w.artifact_id
            WHERE w.depth < ?
        ),
        found AS (
            SELECT artifact_id, min(depth) AS depth, list(DISTINCT via ORDER BY via) AS via,
                   list(DISTINCT relation ORDER BY relation) AS relations
            FROM walk WHERE depth > 0 GROUP BY artifact_id
        )
        SELECT f.artifact_id, f.depth, a.kind, a.uri, a.sha256, a.num_records, a.created_by_run,
               f.via, f.relations
        FROM found f LEFT JOIN artifacts a USING (artifact_id)
        ORDER BY f.depth, a.kind, f.artifact_id
    """,
        [start, max_depth],
    ).fetchall()
    return [
        LineageNode(
            artifact_id=r[0],
            depth=r[1],
            kind=r[2],
            uri=r[3],
            sha256=r[4],
            num_records=r[5],
            created_by_run=r[6],
            via=tuple(r[7] or ()),
            relations=tuple(r[8] or ()),
        )
        for r in rows
    ]


def ancestors(con: duckdb.DuckDBPyConnection, id_or_uri: str, *, max_depth: int = MAX_DEPTH) -> list[LineageNode]:
    """Everything the artifact was made from, back to its sources, nearest first."""
    return _walk(con, id_or_uri, upward=True, max_depth=max_depth)


def descendants(con: duckdb.DuckDBPyConnection, id_or_uri: str, *, max_depth: int = MAX_DEPTH) -> list[LineageNode]:
    """Everything made from the artifact (datasets, shards, checkpoints, reports), nearest first."""
    return _walk(con, id_or_uri, upward=False, max_depth=max_depth)


def latest_run_for_mix(con: duckdb.DuckDBPyConnection, name: str) -> str:
    row = con.execute(
        """
        SELECT m.run_id FROM data_mix m LEFT JOIN runs r USING (run_id)
        WHERE m.mix = ? GROUP BY m.run_id ORDER BY max(r.started_at) DESC NULLS LAST, m.run_id DESC LIMIT 1
    """,
        [name],
    ).fetchone()
    if row is None:
        known = [r[0] for r in con.execute("SELECT DISTINCT mix FROM data_mix ORDER BY 1").fetchall()]
        raise ValueError(f"no data mix {name!r} recorded; mixes recorded: {known}")
    return row[0]


def mix(con: duckdb.DuckDBPyConnection, name: str, *, run_id: str | None = None) -> MixReport:
    """Planned vs realized shares of data mix ``name`` (mix totals, else summed from the per-shard rows)."""
    run_id = run_id or latest_run_for_mix(con, name)
    totals = con.execute(
        """
        SELECT source, modality, planned_ratio, realized_ratio_samples, realized_ratio_tokens,
               num_samples, num_tokens
        FROM data_mix WHERE run_id = ? AND mix = ? AND shard_id IS NULL
    """,
        [run_id, name],
    ).fetchall()
    from_shards = not totals
    if from_shards:
        totals = con.execute(
            """
            WITH s AS (
                SELECT source, modality, max(planned_ratio) AS planned_ratio,
                       sum(num_samples) AS num_samples, sum(num_tokens) AS num_tokens
                FROM data_mix WHERE run_id = ? AND mix = ? GROUP BY source, modality
            )
            SELECT source, modality, planned_ratio,
                   coalesce(num_samples / nullif(sum(num_samples) OVER (), 0), 0),
                   coalesce(num_tokens / nullif(sum(num_tokens) OVER (), 0), 0),
                   num_samples, num_tokens
            FROM s
        """,
            [run_id, name],
        ).fetchall()
    if not totals:
        raise ValueError(f"run {run_id} recorded no data mix {name!r}")
    lines = sorted(
        (
            MixLine(
                source=r[0],
                modality=r[1],
                planned_ratio=r[2],
                realized_ratio_samples=float(r[3]),
                realized_ratio_tokens=float(r[4]),
                num_samples=int(r[5]),
                num_tokens=int(r[6]),
            )
            for r in totals
        ),
        key=lambda line: (-line.planned_ratio, line.source, line.modality),
    )
    return MixReport(run_id=run_id, mix=name, from_shards=from_shards, lines=tuple(lines))


def metrics(
    con: duckdb.DuckDBPyConnection, run_id: str, *, stage: str | None = None, name: str | None = None
) -> list[Metric]:
    """Metrics of a run, optionally of one stage and/or one name, ordered by stage, name, step."""
    rows = con.execute(
        """
        SELECT run_id, stage, step, name, value FROM metrics
        WHERE run_id = ? AND (? IS NULL OR stage = ?) AND (? IS NULL OR name = ?)
        ORDER BY stage, name, step
    """,
        [run_id, stage, stage, name, name],
    ).fetchall()
    return [Metric(run_id=r[0], stage=r[1], step=r[2], name=r[3], value=r[4]) for r in rows]


def reviews(con: duckdb.DuckDBPyConnection, run_id: str) -> list[Review]:
    """Review decisions of a run, oldest first."""
    rows = con.execute(
        """
        SELECT run_id, reviewer, decision, sample_ids, note, reviewed_at FROM reviews WHERE run_id = ?
        ORDER BY reviewed_at, review_id
    """,
        [run_id],
    ).fetchall()
    return [
        Review(
            run_id=r[0], reviewer=r[1], decision=r[2], sample_ids=tuple(r[3] or ()), note=r[4] or "", reviewed_at=r[5]
        )
        for r in rows
    ]


def runs(con: duckdb.DuckDBPyConnection, *, limit: int | None = None) -> list[RunSummary]:
    """Recorded flow runs by tree, newest tree first: a top-level run, then its subflows as they started.

    A tree is the root run when recorded, else the parent (files from before ``root_run_id``)."""
    rows = con.execute(
        """
        WITH t AS (SELECT *, coalesce(root_run_id, parent_run_id, run_id) AS tree FROM runs)
        SELECT t.run_id, t.flow_name, t.run_name, t.status, t.started_at, t.ended_at, t.parent_run_id,
               t.root_run_id
        FROM t LEFT JOIN runs root ON root.run_id = t.tree
        ORDER BY coalesce(root.started_at, t.started_at) DESC NULLS LAST, t.tree, t.run_id <> t.tree,
                 t.started_at NULLS LAST, t.run_id
        LIMIT ?
    """,
        [limit if limit is not None else 2**62],
    ).fetchall()
    return [
        RunSummary(
            run_id=r[0],
            flow_name=r[1],
            run_name=r[2],
            status=r[3],
            started_at=r[4],
            ended_at=r[5],
            parent_run_id=r[6],
            root_run_id=r[7],
        )
        for r in rows
    ]


def run_row(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """One run as a dict of its columns (parameters decoded); ValueError when unknown."""
    cur = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
    row = cur.fetchone()
    if row is None:
        raise ValueError(f"no run {run_id!r} in the lineage store")
    return dict(zip([d[0] for d in cur.description], row))


def as_jsonable(value: Any) -> Any:
    """Dataclass query results to JSON-ready values (datetimes as ISO strings)."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [as_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: as_jsonable(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return {k: as_jsonable(getattr(value, k)) for k in value.__dataclass_fields__}
    return value
