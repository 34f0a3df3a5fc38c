"""``LineageStore``: the one writer of the lineage DuckDB file, and its read-only twin for queries.

DuckDB lets one process hold a file read-write and locks out every other process, readers included
(ECOSYSTEM.md). The flow process opens the store once as the writer; the CLI opens it read-only, which
works only while no writer holds it. Either way a lock held elsewhere becomes ``LineageLockedError``
naming the file and the holder's PID: the file is never touched, so it cannot be corrupted.

Every write is a bulk ``INSERT ... SELECT`` from an Arrow table, deduplicated inside the batch and
idempotent across batches (see ``schema.TableSpec.on_conflict``); ``record_together`` writes several
tables in one transaction (a stage's checkpoint, edges and metrics land together or not at all).

A writer that finds the file held (a ``keye lineage`` query at the wrong moment) waits and retries with
``write_retrying``: a reader never fails a running pipeline.

The file is written in DuckDB's v1.4.0 storage format (``STORAGE_VERSION``), which the DuckDB 1.4 and 1.5
readers on the package index open as well as 2.x: a user's plain ``duckdb`` client, whatever its version,
reads the lineage. DuckDB keeps the format a file was created with, so a file an earlier version of this
code wrote in the 2.x format is copied into the 1.x format once, by the writer, when it opens it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pandas as pd
import pyarrow as pa

from tasks.lineage import openlineage, queries
from tasks.lineage.bulk import to_arrow
from tasks.lineage.records import Artifact, Edge, Metric, MixRow, Review, Run, TaskRun, utc_now
from tasks.lineage.schema import (
    ARTIFACTS,
    DATA_MIX,
    EDGES,
    METRICS,
    REVIEWS,
    RUNS,
    TASK_RUNS,
    TableSpec,
    create_schema,
    missing_tables,
)

log = logging.getLogger(__name__)

Rows = Sequence[Any] | pd.DataFrame | pa.Table
T = TypeVar("T")
_PID = re.compile(r"\(PID (\d+)\)")
#: Storage format the writer creates files in: the newest that DuckDB 1.4 (LTS) and 1.5 readers open.
STORAGE_VERSION = "v1.4.0"
#: The version number DuckDB writes into the file header for that format (1.4 readers open 64 ... 67,
#: 1.5 readers 64 ... 68; 2.x writes larger numbers). Bytes 12-19 of the file, little-endian.
STORAGE_NUMBER = 67
_HEADER_MAGIC = b"DUCK"


class LineageLockedError(RuntimeError):
    """The lineage file is held by another process (or, in this process, opened in the other mode)."""

    def __init__(self, path: Path, *, holder_pid: int | None, detail: str, read_only: bool) -> None:
        self.path = path
        self.holder_pid = holder_pid
        holder = f"process {holder_pid}" if holder_pid is not None else "another connection"
        mode = "read-only" if read_only else "read-write"
        super().__init__(
            f"lineage store {path} is locked by {holder}; cannot open it {mode}. DuckDB allows one writer "
            f"process and no readers beside it: wait for that run to finish, or query from inside the "
            f"writing process. ({detail})"
        )


def storage_number(path: str | Path) -> int | None:
    """The storage version number in a DuckDB file's header; None for a file that is not DuckDB's.

    Layout: an 8-byte checksum, ``DUCK``, then the version as an unsigned 64-bit little-endian integer.
    """
    with open(path, "rb") as file:
        head = file.read(20)
    if len(head) < 20 or head[8:12] != _HEADER_MAGIC:
        return None
    return int.from_bytes(head[12:20], "little")


def _to_readable_format(path: Path) -> None:
    """Copy a lineage file written in a newer storage format into ``STORAGE_VERSION``, in place.

    The copy goes to a hidden file that replaces the original only when complete. Attaching the old file
    read-write takes DuckDB's lock (a writer elsewhere makes this fail as a locked store) and checkpoints
    its write-ahead log on detach, so no stale ``.wal`` is left beside the new file.
    """
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{_quoted(path)}' AS old_format")
        con.execute(f"ATTACH '{_quoted(partial)}' AS new_format (STORAGE_VERSION '{STORAGE_VERSION}')")
        con.execute("COPY FROM DATABASE old_format TO new_format")
        con.execute("DETACH new_format")
        con.execute("DETACH old_format")
    finally:
        con.close()
    os.replace(partial, path)
    log.warning(
        "lineage store %s: rewrote it in DuckDB storage format %s so DuckDB 1.x clients can read it",
        path,
        STORAGE_VERSION,
    )


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        if read_only:
            return duckdb.connect(str(path), read_only=True)
        if path.exists() and (storage_number(path) or 0) > STORAGE_NUMBER:
            _to_readable_format(path)
        # Only a new file takes this format from the setting; an existing one keeps its own (see above).
        return duckdb.connect(str(path), config={"storage_compatibility_version": STORAGE_VERSION})
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            raise
        match = _PID.search(str(exc))
        raise LineageLockedError(
            path, holder_pid=int(match.group(1)) if match else None, detail=str(exc), read_only=read_only
        ) from exc
    except duckdb.ConnectionException as exc:
        # Same process, other mode: DuckDB shares one instance per file and refuses a second config.
        raise LineageLockedError(path, holder_pid=None, detail=str(exc), read_only=read_only) from exc


class LineageStore:
    """The lineage DuckDB file. Use as a context manager; ``read_only=True`` for queries only.

    The writer creates the file and schema if needed. Threads of the writing process (Prefect's
    thread-pool task runner) may share one store: each call takes a lock and its own cursor.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if read_only and not self.path.exists():
            raise FileNotFoundError(f"lineage store {self.path} does not exist (nothing recorded yet?)")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con: duckdb.DuckDBPyConnection | None = _connect(self.path, read_only)
        self._lock = threading.RLock()
        if read_only:
            absent = missing_tables(self._con)
            if absent:
                self.close()
                raise ValueError(f"{self.path} is not a lineage store: tables {absent} are missing")
        else:
            with self._lock:
                create_schema(self._con)
        log.debug("opened lineage store %s (%s)", self.path, "read-only" if read_only else "writer")

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> LineageStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """A cursor on the file for this call (cursors are per thread in DuckDB)."""
        if self._con is None:
            raise ValueError(f"lineage store {self.path} is closed")
        return self._con.cursor()

    # -- writes ------------------------------------------------------------------------------------

    def _write(self, spec: TableSpec, data: Rows) -> int:
        """Insert ``data`` into ``spec``'s table idempotently; returns rows inserted or updated."""
        return self._write_tables([(spec, data)])[0]

    def _write_tables(self, writes: Sequence[tuple[TableSpec, Rows]]) -> list[int]:
        """Each (table, rows) as ``_insert`` writes it, all in one transaction; rows written per table."""
        for spec, _ in writes:
            if self.read_only:
                raise ValueError(f"lineage store {self.path} is open read-only; cannot write {spec.name}")
        tables = [(spec, to_arrow(spec, data)) for spec, data in writes]
        with self._lock:
            con = self.con
            try:
                con.execute("BEGIN TRANSACTION")
                counts = [self._insert(con, spec, table) for spec, table in tables]
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
            finally:
                con.close()
        for (spec, table), count in zip(tables, counts):
            log.debug("lineage %s: wrote %d of %d rows", spec.name, count, table.num_rows)
        return counts

    @staticmethod
    def _insert(con: duckdb.DuckDBPyConnection, spec: TableSpec, table: pa.Table) -> int:
        if table.num_rows == 0:
            return 0
        table = table.append_column("_ord", pa.array(range(table.num_rows), pa.int64()))
        cols = ", ".join(spec.names)
        select = ", ".join(f"CAST({c} AS JSON)" if c in spec.json_columns else c for c in spec.names)
        key = ", ".join(spec.key)
        # Last occurrence wins inside one batch, as a later write would across batches.
        source = f"SELECT {select} FROM incoming QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY _ord DESC) = 1"
        con.register("incoming", table)
        try:
            if spec.on_conflict == "replace":
                match = " AND ".join(f"t.{c} IS NOT DISTINCT FROM i.{c}" for c in spec.key)
                con.execute(f"DELETE FROM {spec.name} t USING incoming i WHERE {match}")
                tail = ""
            elif spec.on_conflict == "ignore":
                tail = " ON CONFLICT DO NOTHING"
            else:
                overrides = dict(spec.update_sql)
                sets = ", ".join(
                    f"{c} = {overrides.get(c, f'COALESCE(excluded.{c}, t.{c})')}"
                    for c in spec.names
                    if c not in spec.key
                )
                tail = f" ON CONFLICT ({key}) DO UPDATE SET {sets}"
            (count,) = con.execute(f"INSERT INTO {spec.name} AS t ({cols}) {source}{tail}").fetchone()
        finally:
            con.unregister("incoming")
        return int(count)

    def record_runs(self, runs: Sequence[Run] | pd.DataFrame) -> int:
        """Insert or update flow runs (a later write fills ended_at/status; the first start stays)."""
        return self._write(RUNS, runs)

    def record_run(self, run: Run) -> int:
        return self.record_runs([run])

    def record_task_runs(self, task_runs: Sequence[TaskRun] | pd.DataFrame) -> int:
        return self._write(TASK_RUNS, task_runs)

    def record_artifacts(self, artifacts: Sequence[Artifact] | pd.DataFrame) -> int:
        """Insert artifacts not yet recorded (content-addressed: a known id is left as it is)."""
        return self._write(ARTIFACTS, artifacts)

    def record_edges(self, edges: Sequence[Edge] | pd.DataFrame) -> int:
        return self._write(EDGES, edges)

    def record_mix(self, rows: Sequence[MixRow] | pd.DataFrame) -> int:
        """Replace the mix rows with the same (run, mix, shard, source, modality)."""
        return self._write(DATA_MIX, rows)

    def record_metrics(self, metrics: Sequence[Metric] | pd.DataFrame) -> int:
        return self._write(METRICS, metrics)

    def record_reviews(self, reviews: Sequence[Review] | pd.DataFrame) -> int:
        return self._write(REVIEWS, reviews)

    def record_together(
        self, *, artifacts: Sequence[Artifact] = (), edges: Sequence[Edge] = (), metrics: Sequence[Metric] = ()
    ) -> None:
        """Artifacts, edges and metrics in one transaction: after a kill, all of them are there or none."""
        self._write_tables([(ARTIFACTS, list(artifacts)), (EDGES, list(edges)), (METRICS, list(metrics))])

    def has_artifact(self, artifact_id: str) -> bool:
        with self._lock:
            found = self.con.execute("SELECT 1 FROM artifacts WHERE artifact_id = ?", [artifact_id]).fetchone()
        return found is not None

    def running_runs(self) -> list[tuple[str, str | None, int | None]]:
        """(run id, host, pid) of every run still recorded as RUNNING."""
        with self._lock:
            rows = self.con.execute("SELECT run_id, host, pid FROM runs WHERE status = 'RUNNING'").fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def mark_crashed(self, run_ids: Sequence[str]) -> None:
        """Record runs that are RUNNING but whose process is gone as CRASHED, ended now."""
        if self.read_only:
            raise ValueError(f"lineage store {self.path} is open read-only; cannot mark runs crashed")
        if not run_ids:
            return
        with self._lock:
            self.con.execute(
                "UPDATE runs SET status = 'CRASHED', ended_at = ? WHERE status = 'RUNNING' AND run_id IN "
                "(SELECT unnest(?))",
                [utc_now(), list(run_ids)],
            )

    def count(self, table: str) -> int:
        """Rows in one lineage table."""
        if table not in {spec.name for spec in (RUNS, TASK_RUNS, ARTIFACTS, EDGES, DATA_MIX, METRICS, REVIEWS)}:
            raise ValueError(f"{table!r} is not a lineage table")
        with self._lock:
            return int(self.con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    # -- queries (see queries.py and openlineage.py) -----------------------------------------------

    def resolve(self, id_or_uri: str, *, sha256: str | None = None) -> str:
        with self._lock:
            return queries.resolve(self.con, id_or_uri, sha256=sha256)

    def ancestors(self, id_or_uri: str, *, max_depth: int = queries.MAX_DEPTH) -> list[queries.LineageNode]:
        with self._lock:
            return queries.ancestors(self.con, id_or_uri, max_depth=max_depth)

    def descendants(self, id_or_uri: str, *, max_depth: int = queries.MAX_DEPTH) -> list[queries.LineageNode]:
        with self._lock:
            return queries.descendants(self.con, id_or_uri, max_depth=max_depth)

    def mix(self, name: str, *, run_id: str | None = None) -> queries.MixReport:
        """Planned vs realized shares of data mix ``name`` in ``run_id`` (default: the latest run that wrote it)."""
        with self._lock:
            return queries.mix(self.con, name, run_id=run_id)

    def runs(self, *, limit: int | None = None) -> list[queries.RunSummary]:
        with self._lock:
            return queries.runs(self.con, limit=limit)

    def metrics(self, run_id: str, *, stage: str | None = None, name: str | None = None) -> list[Metric]:
        with self._lock:
            return queries.metrics(self.con, run_id, stage=stage, name=name)

    def reviews(self, run_id: str) -> list[Review]:
        with self._lock:
            return queries.reviews(self.con, run_id)

    def export_openlineage(self, run_id: str, **options: Any) -> list[dict[str, Any]]:
        """The run (and its task runs) as OpenLineage RunEvents; options as ``openlineage.export``."""
        with self._lock:
            return openlineage.export(self.con, run_id, **options)


def write_retrying(
    path: str | Path, write: Callable[[LineageStore], T], *, timeout_s: float = 900.0, max_delay_s: float = 30.0
) -> T:
    """Open ``path`` as the writer and return ``write(store)``; while another process holds the file, wait.

    The wait doubles from 0.25 s up to ``max_delay_s``; past ``timeout_s`` the last ``LineageLockedError``
    (naming the holder's PID) is raised. Readers hold the file for one query, so a writer waits seconds.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.25
    while True:
        try:
            with LineageStore(path) as store:
                return write(store)
        except LineageLockedError as error:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s; retrying in %.2f s", error, delay)
            time.sleep(delay)
            delay = min(2 * delay, max_delay_s)
