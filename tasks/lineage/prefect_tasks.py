"""Thin Prefect entry points over ``LineageStore``, and the run identity read from Prefect's runtime.

Tasks take the store's path, not a store, so their inputs hash for caching; each call opens the file
in the flow process, where DuckDB shares one instance per file, so the flow stays the one writer.

A run records the host and PID of its process. A run killed outright (SIGKILL, power loss) never records
its end, so when a run starts, earlier RUNNING runs on the same host whose process is gone are recorded
as CRASHED (``close_dead_runs``); runs on other hosts are left as they are, since their processes cannot
be checked from here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import json
import logging
import os
import socket
import subprocess
from pathlib import Path

from prefect import task

from tasks.lineage.records import Run, utc_now
from tasks.lineage.store import LineageStore, write_retrying

log = logging.getLogger(__name__)


def code_version(repo: str | Path | None = None) -> str:
    """``git describe --always --dirty`` of the checkout, else the installed package version."""
    root = Path(repo) if repo is not None else Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        log.debug("no git checkout at %s; using the package version", root)
    try:
        return importlib.metadata.version("keye-pipeline")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def current_run(*, status: str = "RUNNING", ended_at: dt.datetime | None = None) -> Run:
    """The flow run this code executes in, as a ``Run`` (ids, name, parameters from prefect.runtime)."""
    from prefect.runtime import flow_run

    if not flow_run.id:
        raise ValueError("current_run() called outside a Prefect flow run; build a Run yourself")
    parent, root = flow_run.parent_flow_run_id, flow_run.root_flow_run_id
    return Run(
        run_id=str(flow_run.id),
        flow_name=flow_run.flow_name,
        parameters=_plain(flow_run.parameters or {}),
        code_version=code_version(),
        status=status,
        ended_at=ended_at,
        parent_run_id=str(parent) if parent else None,
        run_name=flow_run.name or None,
        root_run_id=str(root) if root else None,
        host=socket.gethostname(),
        pid=os.getpid(),
    )


def _plain(parameters: dict) -> dict:
    """Flow parameters as JSON types: a frozen dataclass (a resolved ``Preset``) becomes its fields."""

    def default(value):
        if dataclasses.is_dataclass(value):
            return dataclasses.asdict(value)
        return str(value)

    return json.loads(json.dumps(dict(parameters), default=default))


def process_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def close_dead_runs(store: LineageStore, *, host: str, own_pid: int) -> list[str]:
    """Mark RUNNING runs of ``host`` whose process is gone as CRASHED; returns their ids.

    The caller's own process is alive by definition (a subflow shares its parent's process), and a PID
    reused by an unrelated process keeps a dead run RUNNING: the mistake errs toward not closing a run."""
    dead = [
        run_id
        for run_id, run_host, pid in store.running_runs()
        if run_host == host and pid is not None and pid != own_pid and not process_alive(pid)
    ]
    if dead:
        log.warning("lineage %s: runs %s were RUNNING but their process is gone: recorded as CRASHED", store.path, dead)
        store.mark_crashed(dead)
    return dead


@task(name="record-run-start", retries=2, retry_delay_seconds=5)
def record_run_start(db_path: str) -> str:
    """Record the current flow run as RUNNING (closing earlier runs that died); returns its run id."""
    run = current_run()

    def write(store: LineageStore) -> None:
        close_dead_runs(store, host=run.host, own_pid=run.pid)
        store.record_run(run)

    write_retrying(db_path, write)
    return run.run_id


@task(name="record-run-end", retries=2, retry_delay_seconds=5)
def record_run_end(db_path: str, status: str = "COMPLETED") -> None:
    """Record the current flow run's final status and end time."""
    run = current_run(status=status, ended_at=utc_now())
    write_retrying(db_path, lambda store: store.record_run(run))
