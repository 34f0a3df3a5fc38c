"""local-folder: the user's own images, videos and JSONL files under ``spec.root``.

* An image or video becomes a record; its text comes from a sidecar with the same stem: ``x.txt`` (a
  caption) or ``x.json`` (``{"question", "answer", "task", "meta"}``). Without one the answer is empty,
  and validation quarantines the record as "empty answer" rather than it vanishing here.
* Each line of a ``*.jsonl`` file is one record: ``question``, ``answer``, optional ``id``, ``task``,
  ``meta`` and ``media`` (a path relative to the JSONL file; its suffix gives the modality, none = text).
  A line that cannot become a Record is returned as ``Rejected`` with its file and line number.

Ids are ``local-<slug of the relative path>-<8 hex of its sha1>``: stable across runs and unique even
when two names slug alike (``a b.png`` and ``a-b.png``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from data_specs.schemas import Record
from tasks.sources.spec import Collected, Rejected, SourceSpec

NAME = "local-folder"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi"}
RAW_CHARS = 4096


def make_id(relative: str) -> str:
    """``local-<slug>-<hash8>`` of a path relative to the root: ``Cats/Tom 1.PNG`` -> ``local-cats-tom-1-png-<hash8>``."""
    slug = re.sub(r"[^a-z0-9]+", "-", relative.lower()).strip("-")[:96] or "item"
    return f"local-{slug}-{hashlib.sha1(relative.encode()).hexdigest()[:8]}"


def modality_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else None


def _media_record(path: Path, root: Path) -> Record:
    relative = path.relative_to(root).as_posix()
    modality = modality_of(path)
    fields = {"question": "", "answer": "", "task": "caption", "meta": {}}
    if path.with_suffix(".json").is_file():
        fields.update(json.loads(path.with_suffix(".json").read_text()))
    elif path.with_suffix(".txt").is_file():
        fields["answer"] = path.with_suffix(".txt").read_text().strip()
    return Record(
        id=make_id(relative), source=NAME, modality=modality, task=fields["task"], question=fields["question"],
        answer=fields["answer"], media_path=str(path), meta={**fields["meta"], "relative_path": relative},
    )


def _jsonl_record(item: dict, jsonl: Path, line_no: int, root: Path) -> Record:
    where = f"{jsonl.relative_to(root).as_posix()}:{line_no}"
    media = jsonl.parent / item["media"] if item.get("media") else None
    modality = modality_of(media) if media else "text"
    if media is not None and modality is None:
        raise ValueError(f"media {item['media']!r} is neither an image nor a video")
    local_id = item.get("id") or where
    return Record(
        id=make_id(str(local_id)), source=NAME, modality=modality,
        task=item.get("task", "instruction" if modality == "text" else "vqa"),
        question=item.get("question", ""), answer=item["answer"],
        media_path=str(media) if media else None, meta={**item.get("meta", {}), "from": where},
    )


def collect(spec: SourceSpec, work_dir: Path) -> Collected:
    """Up to ``spec.limit`` records from ``spec.root`` in sorted path order (JSONL lines in file order)."""
    if not spec.root:
        raise ValueError(f"source {NAME} needs spec.root, the folder to read")
    root = Path(spec.root)
    if not root.is_dir():
        raise ValueError(f"source {NAME}: {root} is not a directory")
    records, rejected = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if len(records) >= spec.limit:
            break
        if modality_of(path):
            try:
                records.append(_media_record(path, root))
            except (ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
                rejected.append(Rejected(source=NAME, where=str(path), reason=f"{type(exc).__name__}: {exc}",
                                         raw=path.name))
        elif path.suffix.lower() == ".jsonl":
            for line_no, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip() or len(records) >= spec.limit:
                    continue
                try:
                    item = json.loads(line)
                    if not isinstance(item, dict):
                        raise ValueError("line is not a JSON object")
                    records.append(_jsonl_record(item, path, line_no, root))
                except (ValueError, TypeError, KeyError) as exc:
                    rejected.append(Rejected(source=NAME, where=f"{path}:{line_no}",
                                             reason=f"{type(exc).__name__}: {exc}", raw=line[:RAW_CHARS]))
    return Collected(records=records, rejected=rejected)
