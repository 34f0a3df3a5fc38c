"""Validate a batch of raw records: cheap decode checks, then the Great Expectations record suite.

Good records pass on; every bad one goes to a quarantine JSONL file (one line per record: its id, source,
all its reasons and the record itself) and is counted by reason. Nothing is dropped silently and one
bad record never stops the others. Inputs a source could not even turn into a Record (``Rejected``) are
quarantined the same way.

The other tables the pipeline makes go through ``quarantine_failures``, one suite run per batch: the LongCoT
samples (``cot`` suite, ``tasks/longcot.py``), the preference pairs (``pair``, ``tasks/preference.py``) and
each mix's shards (``manifest``, ``tasks/shards.py``). Their quarantine lines carry the suite's ``kind``.

Checks, all run on every record so that a quarantine line lists every problem at once:
* duplicate ids (the first occurrence is kept, later ones are quarantined);
* decode: an image must open and fully load with PIL and have a usable aspect ratio; its size is read
  from the header first, and one over ``MAX_IMAGE_PIXELS`` is refused before any pixel is decoded (a
  30000x30000 PNG of a few KB would otherwise take GBs); a video must probe and decode its first frame
  through ``keye_model.video``;
* the ``record`` suite of ``data_specs.expectations`` (schema, ids, modality, blank answers...).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import task

from data_specs.expectations import build_suite, record_row
from data_specs.schemas import Record
from keye_model.geometry import fit_size
from tasks.sources.spec import Rejected

log = logging.getLogger(__name__)
#: Frame size a video is decoded at for the decode check; small because only decodability matters.
CHECK_FRAME_SIZE = (28, 28)
#: Largest image accepted (8192 x 8192): the processor downsizes anything bigger to at most ~16M pixels
#: (20,480 tokens of 28x28), so more only costs decode memory (4 bytes a pixel) and is an attack surface.
MAX_IMAGE_PIXELS = 8192 * 8192
#: The curate flow shards its mixes on parallel threads and each runs the manifest suite: one GX run at a time,
#: since GX's contexts share process-wide registries.
_GX_LOCK = threading.Lock()


@dataclass(frozen=True, kw_only=True)
class Problem:
    """One reason a record is quarantined."""

    check: str
    """Which check found it: ``collect``, ``unique``, ``decode`` or ``expectations``."""
    reason: str
    """Short phrase, the unit of the counts ("image does not decode", "empty answer")."""
    detail: str = ""
    """Specifics (the decoder's error message), empty when the reason says it all."""


@dataclass(frozen=True, kw_only=True)
class ValidationReport:
    """What one validation pass did."""

    passed: list[Record]
    """Records that passed every check, in input order."""
    num_checked: int
    """Records plus rejected inputs looked at."""
    num_quarantined: int
    """Lines appended to the quarantine file."""
    reasons: dict[str, int]
    """Quarantined items per reason (an item with two reasons counts under both)."""
    quarantine_path: str
    """The JSONL file quarantined items were appended to."""


def check_image(path: str) -> Problem | None:
    """None when the image opens, fully decodes and has a usable size; else the problem."""
    from PIL import Image

    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                return Problem(
                    check="decode",
                    reason="image too large",
                    detail=f"{path}: {width}x{height} pixels > {MAX_IMAGE_PIXELS}, refused before decoding",
                )
            image.load()
        fit_size(height, width, 4, 20480)
    except Image.DecompressionBombError as exc:  # PIL's own header check, for sizes far past ours
        return Problem(check="decode", reason="image too large", detail=f"{path}: {exc}")
    except FileNotFoundError as exc:
        return Problem(check="decode", reason="media file missing", detail=str(exc))
    except ValueError as exc:
        if "aspect ratio" in str(exc) or "size must be positive" in str(exc):
            return Problem(check="decode", reason="image size unusable", detail=str(exc))
        return Problem(check="decode", reason="image does not decode", detail=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError...)
        return Problem(check="decode", reason="image does not decode", detail=f"{type(exc).__name__}: {exc}")
    return None


def check_video(path: str) -> Problem | None:
    """None when the video probes and its first frame decodes; else the problem."""
    from keye_model.video import VideoDecodeError, decode_frames, probe_video

    try:
        info = probe_video(path)
        decode_frames(path, fps=info.fps or 1.0, size=CHECK_FRAME_SIZE, indices=[0], info=info)
    except FileNotFoundError as exc:
        return Problem(check="decode", reason="media file missing", detail=str(exc))
    except VideoDecodeError as exc:
        return Problem(check="decode", reason="video does not decode", detail=str(exc))
    return None


def check_media(record: Record) -> Problem | None:
    """The decode check for the record's modality (text records have nothing to decode)."""
    if record.modality == "image":
        return check_image(record.media_path)
    if record.modality == "video":
        return check_video(record.media_path)
    return None


def run_suite(kind: str, rows: list[dict]) -> list[list[str]]:
    """Run the ``kind`` suite on ``rows``; per row, the reasons of the expectations it fails.

    A failing table-level expectation (e.g. the column set) has no rows to point at and fails every row.
    An expectation that raises is a bug in the suite, not in the data: RuntimeError.
    """
    if not rows:
        return []
    with _GX_LOCK:
        return _run_suite(kind, rows)


def _run_suite(kind: str, rows: list[dict]) -> list[list[str]]:
    # GX logs at INFO on import and per context (hundreds of "Skipping registering function ..." lines,
    # "Loading 'datasources' -> []"): chatter about itself, not about our data. Its warnings still show.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    import pandas as pd
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(project_config=config, mode="ephemeral")
    batch = context.data_sources.add_pandas(f"keye-{kind}").add_dataframe_asset(kind)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(
            name=f"validate-{kind}",
            data=batch.add_batch_definition_whole_dataframe("whole"),
            suite=context.suites.add(build_suite(kind)),
        )
    )
    frame = pd.DataFrame(rows).reset_index(drop=True)
    result = definition.run(batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"})
    reasons: list[list[str]] = [[] for _ in rows]
    for outcome in result.results:
        reason = outcome.expectation_config.meta["reason"]
        if (outcome.exception_info or {}).get("raised_exception"):
            raise RuntimeError(f"{kind} suite: expectation for {reason!r} raised: {outcome.exception_info}")
        if outcome.success:
            continue
        indices = outcome.result.get("unexpected_index_list")
        for index in range(len(rows)) if indices is None else sorted(set(indices)):
            reasons[int(index)].append(reason)
    return reasons


def _quarantine_line(
    *, item_id: str, source: str, problems: list[Problem], record: dict | None, raw: str, kind: str | None = None
) -> str:
    line = {
        "id": item_id,
        "source": source,
        "reasons": [p.reason for p in problems],
        "problems": [asdict(p) for p in problems],
        "record": record,
        "raw": raw,
    }
    return json.dumps(line if kind is None else {**line, "kind": kind}, sort_keys=True)


@dataclass(frozen=True, kw_only=True)
class SuiteReport:
    """What one ``quarantine_failures`` pass did."""

    passed: list[Any]
    """Items that passed the suite, in input order."""
    num_quarantined: int
    """Items written to the quarantine file."""
    reasons: dict[str, int]
    """Quarantined items per reason (an item with two reasons counts under both)."""
    quarantine_path: str
    """The JSONL file quarantined items were appended to."""


def quarantine_beside(path: str | Path) -> Path:
    """Where the items kept out of ``path`` go: ``cot_samples.jsonl`` -> ``cot_samples.quarantine.jsonl``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.quarantine.jsonl")


def quarantine_failures(
    kind: str, items: Sequence[Any], rows: Sequence[dict], *, quarantine_path: str | Path
) -> SuiteReport:
    """Run the ``kind`` suite once over ``rows`` (``rows[i]`` is ``items[i]`` in that suite's columns); the items
    that fail are appended to ``quarantine_path`` with every reason (a ``kind`` line: id, source, row), the
    rest are returned. A repeated id keeps its first item and quarantines the others as ``duplicate id``, as
    ``validate_records`` does (the suite's own uniqueness check would drop every copy).

    The id of a row is its ``id`` column (``shard`` for a manifest row), its source its ``source`` (``mix``).
    """
    assert len(items) == len(rows), (kind, len(items), len(rows))
    id_column, source_column = ("shard", "mix") if kind == "manifest" else ("id", "source")
    problems: list[list[Problem]] = [[] for _ in rows]
    seen: set[str] = set()
    for row, found in zip(rows, problems):
        if row.get(id_column) in seen:
            found.append(Problem(check="unique", reason="duplicate id", detail=f"{kind} {row.get(id_column)}"))
        seen.add(row.get(id_column))
    unique = [i for i, found in enumerate(problems) if not found]
    for i, reasons in zip(unique, run_suite(kind, [rows[i] for i in unique])):
        detail = f"{kind} {rows[i].get(id_column)}"
        problems[i].extend(Problem(check="expectations", reason=r, detail=detail) for r in reasons)
    counts: Counter[str] = Counter()
    lines, passed = [], []
    for item, row, found in zip(items, rows, problems):
        if not found:
            passed.append(item)
            continue
        item_id, source = str(row.get(id_column)), str(row.get(source_column))
        lines.append(_quarantine_line(item_id=item_id, source=source, problems=found, record=row, raw="", kind=kind))
        counts.update({p.reason for p in found})
        log.warning("quarantined %s %s (%s): %s", kind, item_id, source, "; ".join(p.reason for p in found))
    path = Path(quarantine_path)
    if lines:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
    log.info("%s suite: %d of %d passed, %d quarantined to %s", kind, len(passed), len(rows), len(lines), path)
    return SuiteReport(
        passed=passed, num_quarantined=len(lines), reasons=dict(sorted(counts.items())), quarantine_path=str(path)
    )


def validate_records(
    records: Iterable[Record], *, quarantine_path: str | Path, rejected: Iterable[Rejected] = ()
) -> ValidationReport:
    """Check ``records`` (and quarantine ``rejected``); append bad items to ``quarantine_path``."""
    records, rejected = list(records), list(rejected)
    problems: list[list[Problem]] = [[] for _ in records]
    first_seen: dict[str, Record] = {}
    checked: dict[tuple[str, str | None], Problem | None] = {}  # many questions share one image: decode it once
    for record, found in zip(records, problems):
        if record.id in first_seen:
            found.append(
                Problem(
                    check="unique",
                    reason="duplicate id",
                    detail=f"first seen from source {first_seen[record.id].source}",
                )
            )
        else:
            first_seen[record.id] = record
        key = (record.modality, record.media_path)
        if key not in checked:
            checked[key] = check_media(record)
        media_problem = checked[key]
        if media_problem is not None:
            found.append(media_problem)
    unique = [i for i, found in enumerate(problems) if not any(p.check == "unique" for p in found)]
    suite_reasons = run_suite("record", [record_row(records[i]) for i in unique])
    for i, reasons in zip(unique, suite_reasons):
        problems[i].extend(Problem(check="expectations", reason=r) for r in reasons)

    counts: Counter[str] = Counter()
    lines = []
    for item in rejected:
        problem = Problem(check="collect", reason=item.kind, detail=f"{item.where}: {item.reason}")
        lines.append(
            _quarantine_line(item_id=item.where, source=item.source, problems=[problem], record=None, raw=item.raw)
        )
        counts[problem.reason] += 1
        log.warning("quarantined %s (%s): %s: %s", item.where, item.source, problem.reason, item.reason)
    passed = []
    for record, found in zip(records, problems):
        if not found:
            passed.append(record)
            continue
        lines.append(
            _quarantine_line(
                item_id=record.id, source=record.source, problems=found, record=json.loads(record.to_json()), raw=""
            )
        )
        counts.update({p.reason for p in found})
        log.warning(
            "quarantined %s (%s): %s",
            record.id,
            record.source,
            "; ".join(f"{p.reason}{': ' + p.detail if p.detail else ''}" for p in found),
        )
    path = Path(quarantine_path)
    if lines:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
    log.info(
        "validated %d records + %d rejected inputs: %d passed, %d quarantined to %s",
        len(records),
        len(rejected),
        len(passed),
        len(lines),
        path,
    )
    return ValidationReport(
        passed=passed,
        num_checked=len(records) + len(rejected),
        num_quarantined=len(lines),
        reasons=dict(sorted(counts.items())),
        quarantine_path=str(path),
    )


@task(name="validate-batch")
def validate_batch(
    records: list[Record], quarantine_path: str, rejected: list[Rejected] | None = None
) -> ValidationReport:
    """Prefect entry point for ``validate_records``."""
    return validate_records(records, quarantine_path=quarantine_path, rejected=rejected or ())
