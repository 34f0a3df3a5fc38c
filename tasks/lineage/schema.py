"""The lineage tables: DDL (created idempotently) and, per table, the Arrow columns bulk writes use.

Each ``TableSpec`` says how a repeated write lands, which is what makes every write idempotent:
``ignore`` (content-addressed rows: the first write stands), ``update`` (the key's row takes the new
non-NULL values), ``replace`` (rows matching the key are deleted, then inserted; used where the key has
a NULL member, which a primary key cannot hold).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True, kw_only=True)
class TableSpec:
    """One lineage table."""

    name: str
    """Table name in the DuckDB file."""
    columns: tuple[tuple[str, pa.DataType], ...]
    """Column names and Arrow types, in table order; names equal the record dataclass fields."""
    key: tuple[str, ...]
    """Columns that identify a row (the primary key, except for ``replace`` tables)."""
    on_conflict: str
    """``ignore``, ``update`` or ``replace`` (see the module docstring)."""
    json_columns: tuple[str, ...] = ()
    """Columns held as JSON text in Arrow and cast to DuckDB JSON on insert."""
    update_sql: tuple[tuple[str, str], ...] = ()
    """For ``update``: column -> SQL expression overriding the default COALESCE(excluded.c, t.c)."""
    ddl: str = ""
    """CREATE TABLE IF NOT EXISTS statement."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(name, kind) for name, kind in self.columns])


RUNS = TableSpec(
    name="runs",
    columns=(
        ("run_id", pa.string()),
        ("flow_name", pa.string()),
        ("parameters", pa.string()),
        ("code_version", pa.string()),
        ("started_at", TS),
        ("ended_at", TS),
        ("status", pa.string()),
        ("parent_run_id", pa.string()),
        ("run_name", pa.string()),
        ("root_run_id", pa.string()),
        ("host", pa.string()),
        ("pid", pa.int64()),
    ),
    key=("run_id",),
    on_conflict="update",
    json_columns=("parameters",),
    update_sql=(("started_at", "LEAST(t.started_at, excluded.started_at)"),),
    ddl="""CREATE TABLE IF NOT EXISTS runs (
        run_id VARCHAR PRIMARY KEY, flow_name VARCHAR NOT NULL, parameters JSON, code_version VARCHAR,
        started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ, status VARCHAR NOT NULL, parent_run_id VARCHAR,
        run_name VARCHAR, root_run_id VARCHAR, host VARCHAR, pid BIGINT)""",
)
TASK_RUNS = TableSpec(
    name="task_runs",
    columns=(
        ("task_run_id", pa.string()),
        ("run_id", pa.string()),
        ("name", pa.string()),
        ("status", pa.string()),
        ("started_at", TS),
        ("ended_at", TS),
    ),
    key=("task_run_id",),
    on_conflict="update",
    update_sql=(("started_at", "LEAST(t.started_at, excluded.started_at)"),),
    ddl="""CREATE TABLE IF NOT EXISTS task_runs (
        task_run_id VARCHAR PRIMARY KEY, run_id VARCHAR NOT NULL, name VARCHAR NOT NULL,
        status VARCHAR NOT NULL, started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ)""",
)
ARTIFACTS = TableSpec(
    name="artifacts",
    columns=(
        ("artifact_id", pa.string()),
        ("kind", pa.string()),
        ("uri", pa.string()),
        ("sha256", pa.string()),
        ("num_bytes", pa.int64()),
        ("num_records", pa.int64()),
        ("created_by_run", pa.string()),
        ("metadata", pa.string()),
        ("created_at", TS),
    ),
    key=("artifact_id",),
    on_conflict="ignore",
    json_columns=("metadata",),
    ddl="""CREATE TABLE IF NOT EXISTS artifacts (
        artifact_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, uri VARCHAR NOT NULL, sha256 VARCHAR,
        num_bytes BIGINT, num_records BIGINT, created_by_run VARCHAR, metadata JSON, created_at TIMESTAMPTZ)""",
)
EDGES = TableSpec(
    name="edges",
    columns=(("parent_id", pa.string()), ("child_id", pa.string()), ("run_id", pa.string()), ("relation", pa.string())),
    key=("parent_id", "child_id", "relation", "run_id"),
    on_conflict="ignore",
    ddl="""CREATE TABLE IF NOT EXISTS edges (
        parent_id VARCHAR NOT NULL, child_id VARCHAR NOT NULL, run_id VARCHAR NOT NULL,
        relation VARCHAR NOT NULL, PRIMARY KEY (parent_id, child_id, relation, run_id))""",
)
DATA_MIX = TableSpec(
    name="data_mix",
    columns=(
        ("run_id", pa.string()),
        ("mix", pa.string()),
        ("shard_id", pa.string()),
        ("source", pa.string()),
        ("modality", pa.string()),
        ("planned_ratio", pa.float64()),
        ("realized_ratio_samples", pa.float64()),
        ("realized_ratio_tokens", pa.float64()),
        ("num_samples", pa.int64()),
        ("num_tokens", pa.int64()),
    ),
    key=("run_id", "mix", "shard_id", "source", "modality"),
    on_conflict="replace",
    ddl="""CREATE TABLE IF NOT EXISTS data_mix (
        run_id VARCHAR NOT NULL, mix VARCHAR NOT NULL, shard_id VARCHAR, source VARCHAR NOT NULL,
        modality VARCHAR NOT NULL, planned_ratio DOUBLE, realized_ratio_samples DOUBLE,
        realized_ratio_tokens DOUBLE, num_samples BIGINT, num_tokens BIGINT)""",
)
METRICS = TableSpec(
    name="metrics",
    columns=(
        ("run_id", pa.string()),
        ("stage", pa.string()),
        ("step", pa.int64()),
        ("name", pa.string()),
        ("value", pa.float64()),
    ),
    key=("run_id", "stage", "step", "name"),
    on_conflict="update",
    ddl="""CREATE TABLE IF NOT EXISTS metrics (
        run_id VARCHAR NOT NULL, stage VARCHAR NOT NULL, step BIGINT NOT NULL, name VARCHAR NOT NULL,
        value DOUBLE, PRIMARY KEY (run_id, stage, step, name))""",
)
REVIEWS = TableSpec(
    name="reviews",
    columns=(
        ("review_id", pa.string()),
        ("run_id", pa.string()),
        ("reviewer", pa.string()),
        ("decision", pa.string()),
        ("sample_ids", pa.list_(pa.string())),
        ("note", pa.string()),
        ("reviewed_at", TS),
    ),
    key=("review_id",),
    on_conflict="ignore",
    ddl="""CREATE TABLE IF NOT EXISTS reviews (
        review_id VARCHAR PRIMARY KEY, run_id VARCHAR NOT NULL, reviewer VARCHAR NOT NULL,
        decision VARCHAR NOT NULL, sample_ids VARCHAR[], note VARCHAR, reviewed_at TIMESTAMPTZ)""",
)

TABLES = (RUNS, TASK_RUNS, ARTIFACTS, EDGES, DATA_MIX, METRICS, REVIEWS)
#: Point lookups by URI use this; the ancestry walk is a hash join per level, which an index would not
#: speed up but would slow every bulk insert, so edges get none beyond their key.
INDEXES = ("CREATE INDEX IF NOT EXISTS artifacts_uri ON artifacts (uri)",)
#: Files written before a column was added or renamed are brought up to date on the writer's open.
ADDED_COLUMNS = (
    ("runs", "run_name", "VARCHAR"),
    ("runs", "root_run_id", "VARCHAR"),
    ("runs", "host", "VARCHAR"),
    ("runs", "pid", "BIGINT"),
)
RENAMED_COLUMNS = (("data_mix", "stage", "mix"),)  # a data mix is not a training stage


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {
        row[0]
        for row in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ? AND database_name = current_database()",
            [table],
        ).fetchall()
    }


def create_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create every table and index that does not exist yet, and upgrade older files; safe on every open."""
    for spec in TABLES:
        con.execute(spec.ddl)
    for table, old, new in RENAMED_COLUMNS:
        if old in _columns(con, table) and new not in _columns(con, table):
            con.execute(f"ALTER TABLE {table} RENAME COLUMN {old} TO {new}")
    for table, column, kind in ADDED_COLUMNS:
        con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
    for statement in INDEXES:
        con.execute(statement)


def missing_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Lineage tables absent from the open file (all of them for a file that is not a lineage store)."""
    present = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    return [spec.name for spec in TABLES if spec.name not in present]
