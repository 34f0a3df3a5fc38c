"""KEYE_LOG_LEVEL (prefect.yaml's job variables) raises our loggers, and only ours, in a process set up the
way a worker's flow run is: Prefect's logging config, root logger at WARNING. A fresh interpreter, since
the level is applied when ``tasks`` is first imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def test_keye_log_level_raises_our_loggers_not_the_libraries(tmp_path):
    script = textwrap.dedent(
        """
        import logging
        from prefect.logging.configuration import setup_logging
        setup_logging()  # as a flow run process does: Prefect's config, root at WARNING, its console handler
        import tasks  # noqa: F401
        logging.getLogger("tasks.sources").info("ours at INFO")
        logging.getLogger("keye_model.training.runner").info("trainer at INFO")
        logging.getLogger("httpx").info("HTTP Request: GET /api/flow_runs")
        logging.getLogger("great_expectations").info("Skipping registering function")
        """
    )
    env = {**os.environ, "KEYE_LOG_LEVEL": "INFO", "PREFECT_HOME": str(tmp_path), "PREFECT_LOGGING_TO_API_ENABLED": "0"}
    env.pop("PREFECT_LOGGING_ROOT_LEVEL", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "ours at INFO" in output and "trainer at INFO" in output, output
    assert "HTTP Request" not in output and "Skipping registering" not in output, output


def test_without_keye_log_level_our_info_stays_hidden_under_prefects_root(tmp_path):
    script = (
        "import logging, tasks; from prefect.logging.configuration import setup_logging; setup_logging(); "
        "logging.getLogger('tasks.sources').info('ours at INFO')"
    )
    env = {**os.environ, "PREFECT_HOME": str(tmp_path), "PREFECT_LOGGING_TO_API_ENABLED": "0"}
    env.pop("KEYE_LOG_LEVEL", None)
    env.pop("PREFECT_LOGGING_ROOT_LEVEL", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ours at INFO" not in done.stdout + done.stderr  # what the variable is for
