"""Prefect cache keys for tasks that pass files by path."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

#: A run folder's identity: a fresh uuid written when the folder is first used.
RUN_MARKER = ".keye-run"


def mark_run_folder(run_dir: str | Path) -> str:
    """Give ``run_dir`` its identity (once); returns it. Deleting the folder forgets its cached tasks."""
    marker = Path(run_dir) / RUN_MARKER
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(uuid.uuid4().hex)
    return marker.read_text()


def run_identity(path: str | Path) -> str:
    """The identity of the run folder that holds ``path`` ("" outside any run folder)."""
    for parent in Path(path).resolve().parents:
        marker = parent / RUN_MARKER
        if marker.is_file():
            return marker.read_text()
    return ""


def file_content_cache_key(context, parameters: dict) -> str:
    """Inputs plus the bytes of every input file, so a rewritten file at the same path misses the cache.

    Parameters named ``*_path`` (not ``out*``) that name a file are hashed by content; ``out*`` paths add
    the identity of the run folder they are in, so a deleted and recreated run folder misses the cache
    instead of getting back paths to files that are gone. The task's code is part of the key too.
    """
    digest = hashlib.sha256(context.task.fn.__code__.co_code)
    for name in sorted(parameters):
        value = parameters[name]
        digest.update(f"{name}={value!r}".encode())
        if name.endswith("_paths") and isinstance(value, (list, tuple)):
            for path in value:
                if Path(path).is_file():
                    digest.update(Path(path).read_bytes())
            continue
        if not (isinstance(value, str) and name.endswith(("_path", "_dir"))):
            continue
        if name.startswith("out"):
            digest.update(run_identity(value).encode())
        elif Path(value).is_file():
            digest.update(Path(value).read_bytes())
    return digest.hexdigest()


#: Options for such tasks: cached across runs by inputs and file contents, results persisted, and
#: retried (they read and write files, and may call a generator endpoint).
FILE_TASK_OPTIONS = dict(cache_key_fn=file_content_cache_key, persist_result=True, retries=2, retry_delay_seconds=5)
