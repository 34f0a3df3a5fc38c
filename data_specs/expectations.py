"""Great Expectations suites, one per kind of table the curate flow produces.

Each suite is declared as data (a tuple of ``Check``: the GX expectation class name, its arguments and
the human reason a failing row is quarantined with) so that it can be read, diffed and tested without
importing Great Expectations, which costs seconds; ``build_suite`` turns a declaration into a
``gx.ExpectationSuite`` and is the only place GX is imported. Running a suite is the job of
``tasks/validate.py``; the pipeline runs every suite on what it makes (records when curating and on each
generated set, ``cot`` on the scored LongCoT samples, ``pair`` on the preference pairs, ``manifest`` on each
mix's shards before its manifest is written) and quarantines the items that fail.

The kinds and their columns (one row per item; text columns are strings, ``meta`` is JSON text):

* ``record``   -- a raw ``data_specs.schemas.Record``, see ``RECORD_COLUMNS``.
* ``cot``      -- a LongCoT cold-start sample (``data_specs.longcot.CoTSample``), see ``COT_COLUMNS``.
* ``pair``     -- an MPO preference pair (``data_specs.longcot.PreferencePair``), see ``PAIR_COLUMNS``.

``record_row``, ``cot_row`` and ``pair_row`` flatten those dataclasses into one row each.
* ``manifest`` -- one shard of a stage manifest (``tasks/shards.py``), see ``MANIFEST_COLUMNS``.

A check with ``when=(column, op, value)`` applies only to the matching rows, e.g. a media path is
required only where ``modality != "text"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from data_specs.longcot import CoTSample, PreferencePair
from data_specs.schemas import ID_PATTERN, MODALITIES, TASK_TYPES, Record

#: Longest question/answer/reasoning text accepted, in characters (a 131k-token context, ~4 chars each).
MAX_TEXT_CHARS = 524_288
IMAGE_SUFFIX_RE = r"(?i)\.(?:png|jpe?g|webp|bmp|gif|tiff?)$"
VIDEO_SUFFIX_RE = r"(?i)\.(?:mp4|mov|mkv|webm|avi)$"
SOURCE_RE = r"^[a-z0-9][a-z0-9-]{0,63}$"
SHARD_NAME_RE = r"^[a-z0-9][a-z0-9_-]*-[0-9]{6}\.tar$"
NON_BLANK_RE = r"\S"

RECORD_COLUMNS = {
    "id": "stable id, WebDataset-safe (ID_PATTERN), unique in the batch",
    "source": "source adapter name, lowercase with dashes",
    "modality": "image, video or text",
    "task": "one of TASK_TYPES",
    "question": "the user turn; may be empty (plain captions) but not null",
    "answer": "the reference answer or caption; not blank",
    "media_path": "image or video file; null exactly for text records; suffix matches the modality",
    "meta": "JSON object text with source-specific extras",
}
COT_COLUMNS = {
    "id": "CoT sample id (ID_PATTERN), unique",
    "record_id": "the Record the problem came from (ID_PATTERN)",
    "source": "source adapter of that record",
    "question": "the (possibly rewritten, harder) problem; not blank",
    "thinking": "the chain of thought between the think tags; not blank",
    "answer": "the final answer after the think tags; not blank",
    "tier": "judge tier: A (answer and reasoning right) or B (right answer, flawed reasoning); C is dropped",
    "review": "approve / edit once a person reviewed it, null if never sent; every B must be reviewed",
    "quality_score": "step-5 score, an integer 1..5",
    "replay_weight": "expected repeats per epoch, > 0",
}
PAIR_COLUMNS = {
    "id": "pair id (ID_PATTERN), unique",
    "problem_id": "the shared prompt's problem (ID_PATTERN)",
    "source": "source of the problem",
    "prompt": "the user turn both responses answer; not blank",
    "chosen": "the preferred response; not blank",
    "rejected": "the dispreferred response; not blank and different from chosen",
    "chosen_score": "ranking score of chosen; for score-gap pairs strictly above rejected_score",
    "rejected_score": "ranking score of rejected",
    "reason": "correct-vs-wrong, score-gap or reference-vs-wrong",
}
MANIFEST_COLUMNS = {
    "shard": "shard file name, <mix>-NNNNNN.tar, unique",
    "mix": "data mix name",
    "sha256": "hex sha256 of the shard file",
    "num_bytes": "shard size in bytes; a tar is at least 1,024",
    "num_records": "samples in the shard, >= 1",
    "tokens": "estimated tokens of the shard's samples, >= 1",
}
COLUMNS = {"record": RECORD_COLUMNS, "cot": COT_COLUMNS, "pair": PAIR_COLUMNS, "manifest": MANIFEST_COLUMNS}


@dataclass(frozen=True, kw_only=True)
class Check:
    """One expectation in a suite, declared without importing GX."""

    expectation: str
    """Class name in ``great_expectations.expectations`` (``ExpectColumnValuesToNotBeNull``...)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Its arguments (``column``, ``regex``, ``value_set``, ``row_condition``...)."""
    reason: str
    """Why a row failing it is quarantined, as a short phrase ("empty answer")."""
    when: tuple[str, str, str] | None = None
    """Row condition ``(column, "==" or "!=", value)``: the check applies only to matching rows."""


def _columns(kind: str) -> Check:
    return Check(
        expectation="ExpectTableColumnsToMatchSet",
        kwargs={"column_set": list(COLUMNS[kind]), "exact_match": True},
        reason=f"columns differ from the {kind} schema",
    )


def _id(column: str, *, unique: bool) -> tuple[Check, ...]:
    checks = (
        Check(expectation="ExpectColumnValuesToNotBeNull", kwargs={"column": column}, reason=f"{column} missing"),
        Check(
            expectation="ExpectColumnValuesToMatchRegex",
            kwargs={"column": column, "regex": ID_PATTERN.pattern},
            reason=f"{column} is not WebDataset-safe",
        ),
    )
    if unique:
        checks += (
            Check(expectation="ExpectColumnValuesToBeUnique", kwargs={"column": column}, reason=f"duplicate {column}"),
        )
    return checks


def _text(column: str, *, blank_ok: bool = False) -> tuple[Check, ...]:
    checks = (
        Check(expectation="ExpectColumnValuesToNotBeNull", kwargs={"column": column}, reason=f"{column} missing"),
        Check(
            expectation="ExpectColumnValueLengthsToBeBetween",
            kwargs={"column": column, "max_value": MAX_TEXT_CHARS},
            reason=f"{column} longer than {MAX_TEXT_CHARS} characters",
        ),
    )
    if not blank_ok:
        checks += (
            Check(
                expectation="ExpectColumnValuesToMatchRegex",
                kwargs={"column": column, "regex": NON_BLANK_RE},
                reason=f"empty {column}",
            ),
        )
    return checks


def _modality() -> Check:
    return Check(
        expectation="ExpectColumnValuesToBeInSet",
        kwargs={"column": "modality", "value_set": list(MODALITIES)},
        reason="bad modality",
    )


def _when(column: str, op: str, value: str) -> dict[str, tuple[str, str, str]]:
    assert op in ("==", "!="), op
    return {"when": (column, op, value)}


RECORD_CHECKS = (
    _columns("record"),
    *_id("id", unique=True),
    Check(
        expectation="ExpectColumnValuesToMatchRegex",
        kwargs={"column": "source", "regex": SOURCE_RE},
        reason="bad source name",
    ),
    _modality(),
    Check(
        expectation="ExpectColumnValuesToBeInSet",
        kwargs={"column": "task", "value_set": list(TASK_TYPES)},
        reason="unknown task",
    ),
    *_text("question", blank_ok=True),
    *_text("answer"),
    Check(
        expectation="ExpectColumnValuesToNotBeNull",
        kwargs={"column": "media_path"},
        **_when("modality", "!=", "text"),
        reason="image/video record without media_path",
    ),
    Check(
        expectation="ExpectColumnValuesToBeNull",
        kwargs={"column": "media_path"},
        **_when("modality", "==", "text"),
        reason="text record with a media_path",
    ),
    Check(
        expectation="ExpectColumnValuesToMatchRegex",
        kwargs={"column": "media_path", "regex": IMAGE_SUFFIX_RE},
        **_when("modality", "==", "image"),
        reason="image record whose file is not an image",
    ),
    Check(
        expectation="ExpectColumnValuesToMatchRegex",
        kwargs={"column": "media_path", "regex": VIDEO_SUFFIX_RE},
        **_when("modality", "==", "video"),
        reason="video record whose file is not a video",
    ),
    # ``meta`` is ``json.dumps`` text, an object exactly when it is braced. (GX's JSON-schema expectation
    # said the same at 4 ms a row: jsonschema re-checks the schema for every value, 200 s for the demo.)
    Check(
        expectation="ExpectColumnValuesToMatchRegex",
        kwargs={"column": "meta", "regex": r"^\{[\s\S]*\}$"},
        reason="meta is not a JSON object",
    ),
)

COT_CHECKS = (
    _columns("cot"),
    *_id("id", unique=True),
    *_id("record_id", unique=False),
    Check(
        expectation="ExpectColumnValuesToMatchRegex",
        kwargs={"column": "source", "regex": SOURCE_RE},
        reason="bad source name",
    ),
    *_text("question"),
    *_text("thinking"),
    *_text("answer"),
    Check(
        expectation="ExpectColumnValuesToBeInSet",
        kwargs={"column": "tier", "value_set": ["A", "B"]},
        reason="tier is not A or B",
    ),
    Check(
        expectation="ExpectColumnValuesToBeInSet",
        kwargs={"column": "review", "value_set": ["approve", "edit"]},
        reason="review rejected the sample",
    ),
    Check(
        expectation="ExpectColumnValuesToNotBeNull",
        kwargs={"column": "review"},
        **_when("tier", "==", "B"),
        reason="tier-B sample not reviewed",
    ),
    Check(
        expectation="ExpectColumnValuesToNotBeNull", kwargs={"column": "quality_score"}, reason="quality_score missing"
    ),
    Check(
        expectation="ExpectColumnValuesToBeInSet",
        kwargs={"column": "quality_score", "value_set": [1, 2, 3, 4, 5]},
        reason="quality_score not an integer in 1..5",
    ),
    Check(
        expectation="ExpectColumnValuesToBeBetween",
        kwargs={"column": "replay_weight", "min_value": 0, "strict_min": True},
        reason="replay_weight not positive",
    ),
)

PAIR_CHECKS = (
    _columns("pair"),
    *_id("id", unique=True),
    *_id("problem_id", unique=False),
    *_text("prompt"),
    *_text("chosen"),
    *_text("rejected"),
    Check(
        expectation="ExpectSelectColumnValuesToBeUniqueWithinRecord",
        kwargs={"column_list": ["chosen", "rejected"]},
        reason="chosen and rejected are the same response",
    ),
    Check(
        expectation="ExpectColumnValuesToBeInSet",
        kwargs={"column": "reason", "value_set": ["correct-vs-wrong", "score-gap", "reference-vs-wrong"]},
        reason="unknown pair reason",
    ),
    Check(
        expectation="ExpectColumnPairValuesAToBeGreaterThanB",
        kwargs={"column_A": "chosen_score", "column_B": "rejected_score", "or_equal": False},
        **_when("reason", "==", "score-gap"),
        reason="chosen does not outscore rejected",
    ),
)

MANIFEST_CHECKS = (
    _columns("manifest"),
    Check(
        expectation="ExpectColumnValuesToMatchRegex",
        kwargs={"column": "shard", "regex": SHARD_NAME_RE},
        reason="shard name is not <mix>-NNNNNN.tar",
    ),
    Check(expectation="ExpectColumnValuesToBeUnique", kwargs={"column": "shard"}, reason="duplicate shard"),
    *_text("mix"),
    Check(
        expectation="ExpectColumnValuesToMatchRegex",
        kwargs={"column": "sha256", "regex": r"^[0-9a-f]{64}$"},
        reason="sha256 is not 64 hex digits",
    ),
    Check(
        expectation="ExpectColumnValuesToBeBetween",
        kwargs={"column": "num_bytes", "min_value": 1024},
        reason="shard smaller than an empty tar",
    ),
    Check(
        expectation="ExpectColumnValuesToBeBetween",
        kwargs={"column": "num_records", "min_value": 1},
        reason="shard without samples",
    ),
    Check(
        expectation="ExpectColumnValuesToBeBetween",
        kwargs={"column": "tokens", "min_value": 1},
        reason="shard without tokens",
    ),
)

#: Declared suites by kind.
SUITES = {"record": RECORD_CHECKS, "cot": COT_CHECKS, "pair": PAIR_CHECKS, "manifest": MANIFEST_CHECKS}


def record_row(record: Record) -> dict[str, Any]:
    """A Record as a ``record`` row (``meta`` as JSON text)."""
    return {
        "id": record.id,
        "source": record.source,
        "modality": record.modality,
        "task": record.task,
        "question": record.question,
        "answer": record.answer,
        "media_path": record.media_path,
        "meta": json.dumps(record.meta, sort_keys=True),
    }


def cot_row(sample: CoTSample) -> dict[str, Any]:
    """A CoTSample as a ``cot`` row."""
    return {
        "id": sample.id,
        "record_id": sample.problem.record_id,
        "source": sample.problem.source,
        "question": sample.problem.question,
        "thinking": sample.path.thinking,
        "answer": sample.path.answer,
        "tier": sample.tier.value,
        "review": sample.review,
        "quality_score": sample.quality_score,
        "replay_weight": sample.replay_weight,
    }


def pair_row(pair: PreferencePair) -> dict[str, Any]:
    """A PreferencePair as a ``pair`` row."""
    return {column: getattr(pair, column) for column in PAIR_COLUMNS}


def build_suite(kind: str):
    """A ``gx.ExpectationSuite`` named ``keye-<kind>``; each expectation's ``meta["reason"]`` is its reason.

    Imports Great Expectations (seconds, once per process). ValueError for an unknown kind.
    """
    if kind not in SUITES:
        raise ValueError(f"no expectation suite {kind!r}; known: {sorted(SUITES)}")
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    expectations = []
    for check in SUITES[kind]:
        kwargs = dict(check.kwargs)
        if check.when is not None:
            column, op, value = check.when
            kwargs["row_condition"] = Column(column) == value if op == "==" else Column(column) != value
        expectations.append(getattr(gxe, check.expectation)(**kwargs, meta={"reason": check.reason}))
    return gx.ExpectationSuite(name=f"keye-{kind}", expectations=expectations)
