"""local-folder: the user's own images, videos and JSONL files under ``spec.root``.

* An image or video becomes a record; its text comes from a sidecar with the same stem: ``x.txt`` (a
  caption) or ``x.json`` (``{"question", "answer", "task", "meta"}``). Without one the answer is empty,
  and validation quarantines the record as "empty answer" rather than it vanishing here.
* Each line of a ``*.jsonl`` file is one record in one of two forms:
  - ours: ``answer``, optional ``question``, ``id``, ``task``, ``meta`` and ``media``;
  - LLaVA's: ``conversations`` (``[{"from": "human", "value": "<image>\\nQ"}, {"from": "gpt", "value": "A"}]``),
    optional ``image`` or ``video`` and ``id``. The ``<image>``/``<video>`` placeholder is dropped (the
    processor places the media itself); a conversation of several exchanges becomes one record per
    exchange (``<id>-turn<k>``), each asked about the same media.
  A media path is relative to the JSONL file; its suffix gives the modality (none = text).
* Untrusted input: each line is decoded on its own, so one line that is not UTF-8 or not JSON is
  quarantined (``Rejected`` with file and line number) and the rest of the file goes on. Every media
  file, sidecar and JSONL must resolve (symlinks followed) inside the folder; one that leaves it (a
  ``../elsewhere/x.jpg``, an absolute path, a symlink out) is quarantined, never read. Any other file is
  quarantined as an unsupported type, so nothing in the folder is skipped without a word.
* The folder is read whole unless ``spec.folder_limit`` is set (``spec.limit`` bounds packaged sources);
  what a limit leaves unread is counted in ``Collected.num_dropped`` and logged.

Ids are ``local-<slug of the relative path>-<8 hex of its sha1>``: stable across runs and unique even
when two names slug alike (``a b.png`` and ``a-b.png``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from data_specs.schemas import IMAGE_SUFFIXES, VIDEO_SUFFIXES, Record
from tasks.sources.spec import Collected, Rejected, SourceSpec

NAME = "local-folder"
SIDECAR_SUFFIXES = (".txt", ".json")
RAW_CHARS = 4096
#: The accepted JSONL forms, named in the reason when a line matches neither.
JSONL_FORMS = (
    "'answer' (optional 'question', 'media', 'id', 'task', 'meta'), or LLaVA-style 'conversations' "
    "[{'from': 'human', 'value': ...}, {'from': 'gpt', 'value': ...}] (optional 'image' or 'video', 'id')"
)
MEDIA_KEYS = ("media", "image", "video")
HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")
PLACEHOLDER = re.compile(r"<(image|video)>")

log = logging.getLogger(__name__)


class Unusable(ValueError):
    """An input that cannot become a record: ``kind`` is the short phrase it is counted under."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def make_id(relative: str) -> str:
    """``local-<slug>-<hash8>`` of a path relative to the root.

    ``Cats/Tom 1.PNG`` -> ``local-cats-tom-1-png-<hash8>``.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", relative.lower()).strip("-")[:96] or "item"
    return f"local-{slug}-{hashlib.sha1(relative.encode()).hexdigest()[:8]}"


def modality_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else None


def inside(path: Path, real_root: Path) -> Path:
    """``path`` with symlinks resolved; Unusable when that leaves ``real_root`` (itself resolved)."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise Unusable("media outside the folder", f"{path} does not resolve: {exc}") from exc
    if not resolved.is_relative_to(real_root):
        raise Unusable(
            "media outside the folder", f"{path} resolves to {resolved}, outside the source folder {real_root}"
        )
    return resolved


def _read_sidecar(path: Path, real_root: Path) -> str:
    inside(path, real_root)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unusable("sidecar is not UTF-8", f"sidecar {path.name}: byte {exc.start} is not UTF-8") from exc


def _media_record(path: Path, root: Path, real_root: Path) -> Record:
    inside(path, real_root)
    relative = path.relative_to(root).as_posix()
    fields = {"question": "", "answer": "", "task": "caption", "meta": {}}
    if path.with_suffix(".json").is_file():
        sidecar = json.loads(_read_sidecar(path.with_suffix(".json"), real_root))
        if not isinstance(sidecar, dict) or not isinstance(sidecar.get("meta", {}), dict):
            raise Unusable(
                "not a valid record",
                f"sidecar {path.with_suffix('.json').name} must be a JSON object "
                "with 'question', 'answer', 'task', 'meta' (an object)",
            )
        fields.update(sidecar)
    elif path.with_suffix(".txt").is_file():
        fields["answer"] = _read_sidecar(path.with_suffix(".txt"), real_root).strip()
    return Record(
        id=make_id(relative),
        source=NAME,
        modality=modality_of(path),
        task=fields["task"],
        question=fields["question"],
        answer=fields["answer"],
        media_path=str(path),
        meta={**fields["meta"], "relative_path": relative},
    )


def _media_of(item: dict, jsonl: Path, real_root: Path) -> Path | None:
    """The line's media file (from ``media``, ``image`` or ``video``), checked to lie inside the folder."""
    keys = [k for k in MEDIA_KEYS if item.get(k) not in (None, "", [])]
    if len(keys) > 1:
        raise Unusable("ambiguous media", f"line names media under {keys}; use one of {list(MEDIA_KEYS)}")
    if not keys:
        return None
    value = item[keys[0]]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise Unusable("unsupported media", f"{keys[0]!r} must be one path (one media file per line), got {value!r}")
    media = jsonl.parent / value
    modality = modality_of(media)
    if modality is None:
        raise Unusable(
            "unsupported media",
            f"{keys[0]} {value!r} is neither an image {sorted(IMAGE_SUFFIXES)} nor a video {sorted(VIDEO_SUFFIXES)}",
        )
    if keys[0] != "media" and keys[0] != modality:
        raise Unusable("unsupported media", f"{keys[0]} {value!r} has a {modality} suffix; use 'media' or '{modality}'")
    inside(media, real_root)
    return media


def _exchanges(item: dict) -> list[tuple[str, str]]:
    """(question, answer) pairs of a line: one for our form, one per human/gpt exchange for LLaVA's."""
    if "conversations" in item:
        if "answer" in item or "question" in item:
            raise Unusable("unknown JSONL keys", "line has both 'conversations' and 'question'/'answer'; use one form")
        turns = item["conversations"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise Unusable("unknown JSONL keys", "'conversations' must be a list of {'from', 'value'} objects")
        roles = [t.get("from") for t in turns]
        pairs_ok = (
            turns
            and len(turns) % 2 == 0
            and all(r in HUMAN_ROLES for r in roles[0::2])
            and all(r in ASSISTANT_ROLES for r in roles[1::2])
        )
        if not pairs_ok or not all(isinstance(t.get("value"), str) for t in turns):
            raise Unusable(
                "unknown JSONL keys",
                f"'conversations' must alternate {HUMAN_ROLES} and {ASSISTANT_ROLES} "
                f"turns with string 'value's, starting with a human; got roles {roles}",
            )
        return [(turns[i]["value"], turns[i + 1]["value"]) for i in range(0, len(turns), 2)]
    if "answer" not in item:
        raise Unusable("unknown JSONL keys", f"line has keys {sorted(item)}; use {JSONL_FORMS}")
    question, answer = item.get("question", ""), item["answer"]
    if not isinstance(question, str) or not isinstance(answer, str):
        raise Unusable("not a valid record", "'question' and 'answer' must be strings")
    return [(question, answer)]


def _line_records(raw: bytes, jsonl: Path, line_no: int, root: Path, real_root: Path) -> list[Record]:
    """The records of one JSONL line; Unusable (with the short phrase it is counted under) otherwise."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unusable("line is not UTF-8", f"byte {exc.start} of the line is not UTF-8 ({exc.reason})") from exc
    try:
        item = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Unusable("line is not JSON", f"JSONDecodeError: {exc}") from exc
    if not isinstance(item, dict):
        raise Unusable("line is not JSON", f"line is a JSON {type(item).__name__}, not an object; use {JSONL_FORMS}")
    media = _media_of(item, jsonl, real_root)
    modality = modality_of(media) if media else "text"
    exchanges = _exchanges(item)
    meta = item.get("meta", {})
    if not isinstance(meta, dict):
        raise Unusable("not a valid record", f"'meta' must be a JSON object, got {type(meta).__name__}")
    where = f"{jsonl.relative_to(root).as_posix()}:{line_no}"
    local_id = str(item.get("id") or where)
    records = []
    for turn, (question, answer) in enumerate(exchanges, start=1):
        if PLACEHOLDER.search(question) and media is None:
            raise Unusable(
                "unsupported media",
                f"the question holds {PLACEHOLDER.search(question)[0]} but the "
                "line names no media; add 'image', 'video' or 'media'",
            )
        several = len(exchanges) > 1
        records.append(
            Record(
                id=make_id(f"{local_id}-turn{turn}" if several else local_id),
                source=NAME,
                modality=modality,
                task=item.get("task", "instruction" if modality == "text" else "vqa"),
                question=PLACEHOLDER.sub("", question).strip(),
                answer=answer,
                media_path=str(media) if media else None,
                meta={**meta, "from": where, **({"turn": turn} if several else {})},
            )
        )
    return records


def _items(root: Path, real_root: Path) -> Iterator[tuple[Path, int | None, bytes | None]]:
    """Every input in sorted path order: (file, None, None) for a file, (jsonl, line_no, bytes) per line.

    A JSONL file that resolves outside the folder is one item, never opened.
    """
    files = sorted(p for p in root.rglob("*") if p.is_file())
    media_stems = {(p.parent, p.stem) for p in files if modality_of(p)}
    for path in files:
        if path.suffix.lower() == ".jsonl" and path.resolve().is_relative_to(real_root):
            with path.open("rb") as handle:  # bytes: a line that is not UTF-8 must not stop the others
                for line_no, raw in enumerate(handle, start=1):
                    if raw.strip():
                        yield path, line_no, raw.rstrip(b"\r\n")
        elif not (path.suffix in SIDECAR_SUFFIXES and (path.parent, path.stem) in media_stems):
            yield path, None, None


def _records_of(path: Path, line_no: int | None, raw: bytes | None, root: Path, real_root: Path) -> list[Record]:
    if line_no is not None:
        return _line_records(raw, path, line_no, root, real_root)
    if modality_of(path):
        return [_media_record(path, root, real_root)]
    if path.suffix.lower() == ".jsonl":
        inside(path, real_root)  # raises: _items yields a JSONL whole only when it leaves the folder
    raise Unusable(
        "unsupported file type",
        f"{path.name}: not an image {sorted(IMAGE_SUFFIXES)}, a video "
        f"{sorted(VIDEO_SUFFIXES)}, a .jsonl file or a sidecar .txt/.json of one",
    )


def collect(spec: SourceSpec, work_dir: Path) -> Collected:
    """Every record of ``spec.root`` (up to ``spec.folder_limit``) in sorted path order, JSONL lines in order."""
    if not spec.root:
        raise ValueError(f"source {NAME} needs spec.root, the folder to read")
    root = Path(spec.root)
    if not root.is_dir():
        raise ValueError(f"source {NAME}: {root} is not a directory")
    real_root = root.resolve()
    records: list[Record] = []
    rejected: list[Rejected] = []
    num_dropped = 0
    for path, line_no, raw in _items(root, real_root):
        if spec.folder_limit is not None and len(records) >= spec.folder_limit:
            num_dropped += 1
            continue
        where = str(path) if line_no is None else f"{path}:{line_no}"
        try:
            records.extend(_records_of(path, line_no, raw, root, real_root))
        except (ValueError, TypeError, KeyError) as exc:  # Unusable, a bad sidecar, a Record refusing a field
            kind = exc.kind if isinstance(exc, Unusable) else "not a valid record"
            text = path.name if raw is None else raw.decode("utf-8", "backslashreplace")
            rejected.append(
                Rejected(
                    source=NAME, where=where, reason=f"{type(exc).__name__}: {exc}", raw=text[:RAW_CHARS], kind=kind
                )
            )
    if spec.folder_limit is not None and len(records) > spec.folder_limit:  # the last line had several turns
        num_dropped += len(records) - spec.folder_limit
        records = records[: spec.folder_limit]
    if num_dropped:
        log.warning(
            "source %s: folder_limit=%d reached, %d items of %s left unread (unset the limit to read the whole folder)",
            NAME,
            spec.folder_limit,
            num_dropped,
            root,
        )
    return Collected(records=records, rejected=rejected, num_dropped=num_dropped)
