"""Turn lists of record dataclasses, or DataFrames, into Arrow tables shaped like a lineage table.

Bulk writes go through Arrow and ``INSERT ... SELECT`` (ECOSYSTEM.md: never executemany). Dataclasses
were validated when they were made; DataFrames are checked here column by column, so a bad frame fails
with the table and column named, before anything is written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import pandas as pd
import pyarrow as pa

from tasks.lineage.records import (
    ARTIFACT_KINDS,
    REVIEW_DECISIONS,
    RUN_STATUSES,
    Review,
    artifact_id,
    as_utc,
)
from tasks.lineage.schema import ARTIFACTS, REVIEWS, RUNS, TASK_RUNS, TableSpec

#: Columns whose values must come from a fixed set, per table.
ALLOWED_VALUES = {
    (RUNS.name, "status"): RUN_STATUSES,
    (TASK_RUNS.name, "status"): RUN_STATUSES,
    (ARTIFACTS.name, "kind"): ARTIFACT_KINDS,
    (REVIEWS.name, "decision"): REVIEW_DECISIONS,
}


def _json_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def _cell(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return as_utc(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def rows_to_arrow(spec: TableSpec, rows: Sequence[Any]) -> pa.Table:
    """Arrow table of ``rows`` (dataclasses whose fields include the table's columns)."""
    columns: dict[str, list[Any]] = {name: [] for name in spec.names}
    for row in rows:
        if not dataclasses.is_dataclass(row):
            raise ValueError(f"table {spec.name}: expected record dataclasses, got {type(row).__name__}")
        for name in spec.names:
            value = getattr(row, name)
            columns[name].append(_json_text(value) if name in spec.json_columns else _cell(value))
    return pa.table(columns, schema=spec.arrow_schema)


def _fill_derived_ids(spec: TableSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Artifact and review ids are derived from content: compute them when the frame lacks them."""
    if spec is ARTIFACTS and "artifact_id" not in frame.columns:
        sha = frame["sha256"] if "sha256" in frame.columns else pd.Series([None] * len(frame), index=frame.index)
        ids = [
            artifact_id(k, u, s if isinstance(s, str) else None) for k, u, s in zip(frame["kind"], frame["uri"], sha)
        ]
        frame = frame.assign(artifact_id=ids)
    if spec is REVIEWS and "review_id" not in frame.columns:
        ids = [
            Review(
                run_id=r.run_id,
                reviewer=r.reviewer,
                decision=r.decision,
                sample_ids=tuple(r.sample_ids),
                note=getattr(r, "note", "") or "",
                reviewed_at=r.reviewed_at,
            ).review_id
            for r in frame.itertuples(index=False)
        ]
        frame = frame.assign(review_id=ids)
    return frame


def frame_to_arrow(spec: TableSpec, frame: pd.DataFrame) -> pa.Table:
    """Arrow table of a DataFrame whose columns are named like the table's (optional ones may be absent)."""
    frame = _fill_derived_ids(spec, frame)
    missing_keys = [name for name in spec.key if name not in frame.columns and name != "shard_id"]
    if missing_keys:
        raise ValueError(f"table {spec.name}: frame lacks key columns {missing_keys} (has {list(frame.columns)})")
    extra = sorted(set(frame.columns) - set(spec.names))
    if extra:
        raise ValueError(
            f"table {spec.name}: frame has unknown columns {extra}; expected a subset of {list(spec.names)}"
        )
    for name in spec.key:
        if name in frame.columns and name != "shard_id" and frame[name].isna().any():
            raise ValueError(
                f"table {spec.name}: key column {name} has nulls at rows {list(frame.index[frame[name].isna()][:5])}"
            )
    for (table, name), allowed in ALLOWED_VALUES.items():
        if table == spec.name and name in frame.columns:
            bad = sorted(set(frame[name].dropna().unique()) - set(allowed))
            if bad:
                raise ValueError(f"table {spec.name}: column {name} has values {bad} not in {allowed}")
    arrays = {}
    for name, kind in spec.columns:
        if name not in frame.columns:
            arrays[name] = pa.nulls(len(frame), type=kind)
        elif name in spec.json_columns:
            arrays[name] = pa.array([_json_text(v) for v in frame[name]], type=kind)
        elif kind == pa.timestamp("us", tz="UTC"):
            values = pd.to_datetime(frame[name])
            values = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
            arrays[name] = pa.array(values, type=kind)
        elif pa.types.is_list(kind):
            arrays[name] = pa.array([None if v is None else list(v) for v in frame[name]], type=kind)
        else:
            arrays[name] = pa.array(frame[name], type=kind, from_pandas=True)
    return pa.table(arrays, schema=spec.arrow_schema)


def to_arrow(spec: TableSpec, data: Sequence[Any] | pd.DataFrame | pa.Table) -> pa.Table:
    """Arrow table for ``spec`` from dataclasses, a DataFrame, or an Arrow table with the same columns."""
    if isinstance(data, pa.Table):
        data = data.to_pandas()
    if isinstance(data, pd.DataFrame):
        return frame_to_arrow(spec, data)
    return rows_to_arrow(spec, list(data))
