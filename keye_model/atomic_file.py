"""Files a rerun reads are replaced whole or not at all: write a temporary file beside, then ``os.replace``.

A file written in place and cut by a kill (``result.json``, a stage's input stamp, a manifest) is read by
the next run as torn JSON, or as a different stamp that clears the stage; ``os.replace`` is atomic on one
file system, so a reader sees the old file or the new one.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def write_text_atomically(path: str | Path, text: str, *, fsync: bool = True) -> None:
    """Write ``text`` to ``path`` through ``.<name>.<host>.<pid>.partial`` (unique per process) and rename it."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.partial")
    try:
        with partial.open("w") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
