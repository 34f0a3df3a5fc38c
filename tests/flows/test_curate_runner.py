"""The pipeline's task_runner parameter reaches the curate subflow, where curation's tasks run."""

from __future__ import annotations

import pytest
from prefect_dask import DaskTaskRunner

from flows.curate import curate, curate_on


def test_curate_runs_on_the_named_task_runner(monkeypatch):
    assert curate_on("thread") is curate
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.setenv("PREFECT_DASK_ADDRESS", "tcp://127.0.0.1:8786")
    runner = curate_on("dask").task_runner
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://127.0.0.1:8786"
    with pytest.raises(ValueError, match="task runner"):
        curate_on("ray")


def test_dask_without_a_prefect_server_is_refused(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(ValueError, match="needs a running Prefect server"):
        curate_on("dask")
