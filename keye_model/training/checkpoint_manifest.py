"""DeepSpeed checkpoints the runner wrote itself, and only those: a sha256 manifest per tag, checked on resume.

``engine.load_checkpoint`` unpickles its files (``torch.load(weights_only=False)``), so a file planted in
``<stage>/deepspeed/`` runs code in the trainer. The runner therefore:

- saves with ``save_latest=False`` and writes, after every rank finished its files, the manifest
  ``deepspeed/<tag>.sha256.json`` (each file's relative path, size and sha256), then ``deepspeed/latest``
  naming the tag; both atomically (temporary file + ``os.replace``), so a kill at any point leaves the
  previous tag resumable and never a ``latest`` without its manifest;
- on resume reads ``latest`` and refuses a tag that is not one plain name inside ``deepspeed/`` (``..``,
  an absolute path, a symlink out), a tag without a manifest, a file missing, changed, added or a symlink
  in the tag folder; only then does DeepSpeed load that exact tag.

This moves trust from "every file in deepspeed/" to "what this runner recorded": whoever can rewrite the
manifest too can still plant code, which is why the whole run folder is the trust boundary
(docs/design.md, "Trust boundary").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from keye_model.atomic_file import write_text_atomically

LATEST = "latest"
MANIFEST_SUFFIX = ".sha256.json"
#: A tag is one plain file name: no separators, so it cannot name a folder outside deepspeed/.
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class UntrustedCheckpointError(ValueError):
    """A DeepSpeed checkpoint this runner did not write (or that changed since); never loaded."""


def manifest_path(ds_dir: Path, tag: str) -> Path:
    return ds_dir / f"{tag}{MANIFEST_SUFFIX}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(tag_dir: Path) -> list[Path]:
    """Every file under ``tag_dir``, relative to it; a symlink anywhere is refused (it may point out)."""
    found = []
    for root, dirs, names in os.walk(tag_dir):
        for name in (*dirs, *names):
            path = Path(root) / name
            if path.is_symlink():
                raise UntrustedCheckpointError(f"checkpoint file {path} is a symlink; refusing to load it")
        found += [(Path(root) / name).relative_to(tag_dir) for name in names]
    return sorted(found)


def _is_local_leader() -> bool:
    return os.environ.get("LOCAL_RANK", "0") == "0"


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def save(engine, ds_dir: Path, tag: str, client_state: dict[str, Any]) -> None:
    """``engine.save_checkpoint`` (all ranks), then the tag's manifest, then ``latest`` naming it."""
    if not _TAG.match(tag):
        raise ValueError(f"checkpoint tag {tag!r} is not a plain name")
    engine.save_checkpoint(str(ds_dir), tag=tag, client_state=client_state, save_latest=False)  # ends in a barrier
    if _is_local_leader():
        files = {
            str(rel): {"sha256": _sha256(ds_dir / tag / rel), "num_bytes": (ds_dir / tag / rel).stat().st_size}
            for rel in _files(ds_dir / tag)
        }
        write_text_atomically(manifest_path(ds_dir, tag), json.dumps({"tag": tag, "files": files}, indent=1))
    _barrier()
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        write_text_atomically(ds_dir / LATEST, tag)
    _barrier()


def latest_tag(ds_dir: Path) -> str | None:
    """The tag ``latest`` names, once it is known to be a folder inside ``ds_dir``; None: nothing saved."""
    if ds_dir.is_symlink():
        raise UntrustedCheckpointError(f"checkpoint folder {ds_dir} is a symlink; refusing to resume from it")
    latest = ds_dir / LATEST
    if not latest.exists():
        return None
    tag = latest.read_bytes().decode("ascii", errors="replace").strip()
    if not _TAG.match(tag):
        raise UntrustedCheckpointError(f"{latest} names {tag!r}, not a checkpoint folder inside {ds_dir}")
    tag_dir = ds_dir / tag
    if tag_dir.is_symlink() or not tag_dir.is_dir() or tag_dir.resolve().parent != ds_dir.resolve():
        raise UntrustedCheckpointError(f"{latest} names {tag!r}, which is not a folder inside {ds_dir}")
    return tag


def verify(ds_dir: Path, tag: str) -> None:
    """Raise ``UntrustedCheckpointError`` naming the file unless ``ds_dir/tag`` is exactly what its manifest says."""
    manifest = manifest_path(ds_dir, tag)
    if not manifest.is_file() or manifest.is_symlink():
        raise UntrustedCheckpointError(
            f"checkpoint {ds_dir / tag} has no manifest {manifest.name}: this runner did not write it (or wrote it "
            f"before checkpoints were hashed); delete {ds_dir} to train the stage from its start"
        )
    try:
        recorded = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise UntrustedCheckpointError(f"checkpoint manifest {manifest} is unreadable: {error}") from error
    present = {str(rel) for rel in _files(ds_dir / tag)}
    added = sorted(present - set(recorded))
    if added:
        raise UntrustedCheckpointError(f"checkpoint file {ds_dir / tag / added[0]} is not in {manifest.name}")
    for rel, entry in sorted(recorded.items()):
        path = ds_dir / tag / rel
        if rel not in present:
            raise UntrustedCheckpointError(f"checkpoint file {path} listed in {manifest.name} is missing")
        if path.stat().st_size != entry["num_bytes"] or _sha256(path) != entry["sha256"]:
            raise UntrustedCheckpointError(
                f"checkpoint file {path} does not match its sha256 in {manifest.name}; refusing to load it"
            )


def load(engine, ds_dir: Path) -> dict[str, Any] | None:
    """The client state of the latest verified checkpoint, loaded into ``engine``; None when there is none.

    Each node's local rank 0 verifies; every rank learns the verdict, so all raise the same error together.
    """
    error = None
    tag = None
    try:
        tag = latest_tag(ds_dir)
        if tag is not None and _is_local_leader():
            verify(ds_dir, tag)
    except UntrustedCheckpointError as found:
        error = str(found)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        verdicts: list[str | None] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(verdicts, error)
        error = next((e for e in verdicts if e), None)
    if error:
        raise UntrustedCheckpointError(error)
    if tag is None:
        return None
    _, client = engine.load_checkpoint(str(ds_dir), tag=tag)
    return client
