"""``keye/full-pipeline`` the way a team runs it: a real Prefect server on loopback, the shipped
``prefect.yaml`` deployed with the CLI, a process worker (started outside the checkout: the pull step
must bring the run into it), a deployment run through the API, and the run's checkpoint in its lineage.

Why only ``stage1`` (curation runs before it and evaluation after it, as the flow always does): it
crosses every boundary this test is about -- deploy, pull step, worker subprocess, job-variable env,
our code and data on disk, lineage written by the flow process -- while training one tiny stage of
eleven. Measured on this 2-core machine: the whole test ~2 min (server + deploy ~55 s, the run ~60 s);
the full tiny pipeline adds 2-4 min of training that the flow tests already cover.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SERVER_START_S = 180
RUN_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, num_chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-num_chars:] if path.exists() else "(no log)"


@contextlib.contextmanager
def background(argv: list[str], log: Path, env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen]:
    """A subprocess in its own process group, stopped with everything it started when the block ends."""
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=wait_s)
                    break


def wait_healthy(api_url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"prefect server exited with {server.returncode}:\n{tail(log)}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{api_url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        time.sleep(1)
    pytest.fail(f"prefect server not healthy within {SERVER_START_S} s:\n{tail(log)}")


def prefect(args: list[str], env: dict[str, str], timeout_s: int = 180) -> str:
    done = subprocess.run(
        [str(BIN / "prefect"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    assert done.returncode == 0, f"prefect {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_full_pipeline_deployment_runs_on_a_process_worker(tmp_path):
    from prefect.client.schemas.objects import StateType

    from tasks.lineage import LineageStore

    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("KEYE_REPO_DIR", None)  # the recipe's default: the folder `prefect deploy` runs in
    # A cwd other than the repository for the server and worker: the pull step, not the worker's
    # folder, must put the flow run in the checkout.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_dir = tmp_path / "run"
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    server_argv = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with background(server_argv, server_log, env, elsewhere) as server:
        wait_healthy(api_url, server, server_log)
        prefect(["work-pool", "create", "local-process", "--type", "process"], env)
        # the whole shipped recipe, as the README says; it loads every flow once (a few seconds)
        prefect(["--no-prompt", "deploy", "--all"], env, timeout_s=300)
        with api_client(api_url) as client:
            deployments = {d.name: d for d in client.read_deployments()}
        assert sorted(deployments) == ["curate", "evaluate", "full-pipeline", "posttrain", "pretrain"]
        assert all(d.work_pool_name == "local-process" for d in deployments.values())
        worker_argv = [str(BIN / "prefect"), "worker", "start", "--pool", "local-process"]
        with background(worker_argv, worker_log, env, elsewhere) as worker:
            out = prefect(
                [
                    "deployment",
                    "run",
                    "keye/full-pipeline",
                    "--param",
                    f"run_dir={run_dir}",
                    "--param",
                    f"stages={json.dumps(['stage1'])}",
                ],
                env,
            )
            flow_run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
            state = wait_for_final_state(api_url, flow_run_id, worker, worker_log)
            assert state.type == StateType.COMPLETED, (
                f"flow run {flow_run_id} ended {state.type.value}: {state.message}\nworker log:\n{tail(worker_log)}"
            )
            library_loggers = logger_names(api_url)
    # PREFECT_LOGGING_EXTRA_LOGGERS from the deployment's job variables: our library logs reach the UI
    assert "tasks.validate" in library_loggers, library_loggers
    # The worker's console (the flow run's output included) shows progress, not library chatter: no line
    # per Prefect API call (httpx at INFO) and no Great Expectations import chatter.
    worker_text = worker_log.read_text(errors="replace")
    chatter = [line for line in worker_text.splitlines() if "HTTP Request:" in line or "Skipping registering" in line]
    assert not chatter, f"{len(chatter)} library lines in the worker log, e.g.:\n" + "\n".join(chatter[:5])
    # ...while our loggers' INFO (KEYE_LOG_LEVEL in the job variables) still reaches it: the trainer's steps
    assert "keye_model.training.runner - stage stage1 step" in worker_text, tail(worker_log)
    (step,) = deployments["full-pipeline"].pull_steps
    # recorded at deploy time: the checkout `prefect deploy` ran in
    assert Path(step["prefect.deployments.steps.set_working_directory"]["directory"]).resolve() == ROOT, step
    with LineageStore(run_dir / "lineage.duckdb", read_only=True) as store:
        rows = store.con.execute(
            "SELECT a.uri, a.metadata->>'$.stage', r.flow_name, r.parent_run_id FROM artifacts a "
            "JOIN runs r ON r.run_id = a.created_by_run WHERE a.kind = 'checkpoint'"
        ).fetchall()
    # made by the pretrain subflow of the deployment's run
    assert [(Path(uri), *rest) for uri, *rest in rows] == [
        (run_dir / "stages" / "stage1" / "checkpoint", "stage1", "pretrain", flow_run_id)
    ], rows
    assert (run_dir / "stages" / "stage1" / "checkpoint" / "model.safetensors").is_file()


@contextlib.contextmanager
def api_client(api_url: str):
    """A client of the test's server (settings first: a client reads them when it is made)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client


def wait_for_final_state(api_url: str, flow_run_id: str, worker: subprocess.Popen, worker_log: Path):
    deadline = time.monotonic() + RUN_TIMEOUT_S
    state = None
    with api_client(api_url) as client:
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                pytest.fail(f"worker exited with {worker.returncode}:\n{tail(worker_log)}")
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_final():
                return state
            time.sleep(2)
    pytest.fail(
        f"flow run {flow_run_id} not finished within {RUN_TIMEOUT_S} s (last state "
        f"{state.type.value if state else None}):\nworker log:\n{tail(worker_log)}"
    )


def logger_names(api_url: str) -> set[str]:
    """Names of the loggers whose records reached the server (the UI shows these)."""
    names: set[str] = set()
    with api_client(api_url) as client:
        for offset in range(0, 100_000, 200):
            page = client.read_logs(limit=200, offset=offset)
            names.update(log.name for log in page)
            if len(page) < 200:
                return names
    return names
