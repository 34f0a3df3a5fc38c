"""Prefect's share of a run: task run time inside the phase subflows, read back from the API."""

from __future__ import annotations

import time

from prefect import flow, task

from tasks.reports import task_time_share


@task
def work(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@flow
def phase(n: int) -> float:
    return sum(work(0.2) for _ in range(n))


@flow
def pipeline() -> float:
    return phase(2) + phase(1)


def test_task_time_of_the_phase_subflows_is_read_back(prefect_harness):
    state = pipeline(return_state=True)
    total_s, count = task_time_share(str(state.state_details.flow_run_id), expected_tasks=3)
    assert count == 3
    assert 0.6 <= total_s < 5.0
