"""Prefect tasks and the plain functions behind them; every flow module imports this package.

``KEYE_LOG_LEVEL`` (set in prefect.yaml's job variables) gives our loggers their level in a process where
nothing else does: a worker's flow run, whose root logger Prefect leaves at WARNING. Raising the root logger
instead (PREFECT_LOGGING_ROOT_LEVEL=INFO) would also print every library's INFO -- one httpx line per
Prefect API call, hundreds per run. Only our loggers are raised; their records still reach Prefect's
console and API handlers through propagation and PREFECT_LOGGING_EXTRA_LOGGERS.
"""

from __future__ import annotations

import logging
import os

#: The top-level loggers of our packages (the names PREFECT_LOGGING_EXTRA_LOGGERS lists).
OUR_LOGGERS = ("keye_model", "tasks", "flows")

if os.environ.get("KEYE_LOG_LEVEL"):
    for _name in OUR_LOGGERS:
        logging.getLogger(_name).setLevel(os.environ["KEYE_LOG_LEVEL"].upper())
