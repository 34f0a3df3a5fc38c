"""Raw data sources, one small module each, found by name.

Adding a source is one module in this package with ``NAME`` and ``collect(spec, work_dir)``; the registry
finds it by scanning the package (on first use, not at import time). ``collect_records`` is the plain
function; ``collect_source`` its Prefect task.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from pathlib import Path
from types import ModuleType

from prefect import task

from tasks.sources.spec import Collected, Rejected, SourceSpec

__all__ = ["Collected", "Rejected", "SourceSpec", "collect_records", "collect_source", "source_names"]

log = logging.getLogger(__name__)
#: Modules of this package that are not sources.
_NOT_SOURCES = {"spec"}


def _source_modules() -> dict[str, ModuleType]:
    modules = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in _NOT_SOURCES or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        assert module.NAME not in modules, f"two sources are named {module.NAME!r}"
        modules[module.NAME] = module
    return modules


def source_names() -> list[str]:
    """Registered source names, sorted."""
    return sorted(_source_modules())


def collect_records(spec: SourceSpec, work_dir: str | Path) -> Collected:
    """Run one source; ValueError naming the known sources for an unknown name."""
    modules = _source_modules()
    if spec.name not in modules:
        raise ValueError(f"unknown source {spec.name!r}; known: {sorted(modules)}")
    out = Path(work_dir) / spec.name
    out.mkdir(parents=True, exist_ok=True)
    collected = modules[spec.name].collect(spec, out)
    log.info("source %s: %d records, %d rejected", spec.name, len(collected.records), len(collected.rejected))
    return collected


@task(name="collect-source", task_run_name="collect-{spec.name}", retries=2, retry_delay_seconds=5)
def collect_source(spec: SourceSpec, work_dir: str) -> Collected:
    """Prefect entry point for ``collect_records``."""
    return collect_records(spec, work_dir)
