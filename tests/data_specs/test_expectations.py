"""The GX suites: each catches its schema violations, with the declared reason, and passes good rows."""

from __future__ import annotations

import great_expectations.expectations as gxe
import pytest

from data_specs.expectations import COLUMNS, SUITES, build_suite, cot_row, pair_row, record_row
from data_specs.longcot import CoTPath, CoTProblem, CoTSample, JudgeVerdict, PreferencePair, QualityTier, RuleReport
from data_specs.schemas import Record
from tasks.validate import run_suite


@pytest.fixture(scope="session")
def gx():
    """Great Expectations, imported once per test session (it takes seconds)."""
    import great_expectations

    return great_expectations


def good_records() -> list[dict]:
    return [
        record_row(r)
        for r in (
            Record(
                id="t-img",
                source="easy-vqa",
                modality="image",
                task="vqa",
                question="what shape?",
                answer="circle",
                media_path="/data/1.png",
                meta={"image_id": 1},
            ),
            Record(
                id="t-vid",
                source="scene-videos",
                modality="video",
                task="temporal_localization",
                question="when?",
                answer="At 2.0 seconds.",
                media_path="/data/v.mp4",
            ),
            Record(
                id="t-txt", source="text-instructions", modality="text", task="instruction", question="q", answer="a"
            ),
        )
    ]


def test_every_declared_check_names_a_real_gx_expectation_and_known_columns(gx):
    for kind, checks in SUITES.items():
        for check in checks:
            assert hasattr(gxe, check.expectation), check
            for key in ("column", "column_A", "column_B"):
                if key in check.kwargs:
                    assert check.kwargs[key] in COLUMNS[kind], (kind, check)
        assert len(build_suite(kind).expectations) == len(checks)


#: (column, value, which good row it is a copy of, the reason it must be caught with)
RECORD_VIOLATIONS = [
    ("answer", "", 0, "empty answer"),
    ("answer", "   ", 2, "empty answer"),
    ("answer", None, 0, "answer missing"),
    ("modality", "audio", 0, "bad modality"),
    ("modality", "video", 0, "video record whose file is not a video"),
    ("id", "img.v2.0001", 1, "id is not WebDataset-safe"),
    ("id", "t-txt", 0, "duplicate id"),
    ("task", "dancing", 2, "unknown task"),
    ("media_path", "/data/x.png", 2, "text record with a media_path"),
    ("media_path", None, 1, "image/video record without media_path"),
    ("source", "Easy VQA", 0, "bad source name"),
    ("meta", "[1, 2]", 0, "meta is not a JSON object"),
]


@pytest.fixture(scope="module")
def record_violations(gx):
    """One suite run over the good rows followed by one bad copy per violation (GX runs cost ~1 s)."""
    rows = good_records()
    for n, (column, value, source_row, _) in enumerate(RECORD_VIOLATIONS):
        bad = {**good_records()[source_row], "id": f"bad-{n}"}
        bad[column] = value
        rows.append(bad)
    return run_suite("record", rows)


def test_record_suite_passes_good_rows(record_violations):
    assert record_violations[:2] == [[], []]
    assert record_violations[2] == ["duplicate id"]  # t-txt is reused by one bad row


@pytest.mark.parametrize("n", range(len(RECORD_VIOLATIONS)), ids=[v[3] for v in RECORD_VIOLATIONS])
def test_record_suite_catches_each_violation(record_violations, n):
    column, value, _, reason = RECORD_VIOLATIONS[n]
    assert reason in record_violations[3 + n], (column, value, record_violations[3 + n])


def test_a_missing_column_fails_every_row(gx):
    rows = [{k: v for k, v in row.items() if k != "meta"} for row in good_records()]
    assert all("columns differ from the record schema" in r for r in run_suite("record", rows))


def make_cot(**changes) -> CoTSample:
    problem = CoTProblem(
        id="p1",
        record_id="easy-vqa-train-1",
        source="easy-vqa",
        task="counting",
        category="counting",
        question="How many shapes?",
        reference="1",
    )
    path = CoTPath(
        id="p1-p0",
        problem_id="p1",
        text="<think>one circle</think>1",
        thinking="one circle",
        answer="1",
        finish_reason="stop",
        num_tokens=6,
        mean_logprob=-0.2,
        step_min_logprob=-0.3,
        agreement=1.0,
    )
    sample = CoTSample(
        id="p1-p0",
        problem=problem,
        path=path,
        rules=RuleReport(well_formed=True, answer_correct=True, length_ok=True, repetitive=False, num_steps=1),
        verdict=JudgeVerdict(judge="rule-judge", scores={"relevance": 5}),
        tier=QualityTier.A,
        quality_score=4,
        replay_weight=2.0,
    )
    return sample if not changes else CoTSample(**{**sample.__dict__, **changes})


COT_VIOLATIONS = [
    ({"tier": QualityTier.C}, "tier is not A or B"),
    ({"tier": QualityTier.B}, "tier-B sample not reviewed"),
    ({"tier": QualityTier.B, "review": "reject"}, "review rejected the sample"),
    ({"quality_score": 7}, "quality_score not an integer in 1..5"),
    ({"quality_score": None}, "quality_score missing"),
    ({"replay_weight": 0.0}, "replay_weight not positive"),
]


def test_cot_suite(gx):
    good = cot_row(make_cot())
    reviewed_b = cot_row(make_cot(id="p1-p1", tier=QualityTier.B, review="edit"))
    bad = [{**cot_row(make_cot(**changes)), "id": f"bad-{n}"} for n, (changes, _) in enumerate(COT_VIOLATIONS)]
    blank = {**cot_row(make_cot()), "id": "blank", "thinking": " "}
    found = run_suite("cot", [good, reviewed_b, *bad, blank])
    assert found[0] == [] and found[1] == []
    for (changes, reason), reasons in zip(COT_VIOLATIONS, found[2:]):
        assert reason in reasons, (changes, reasons)
    assert "empty thinking" in found[-1]


def make_pair(**changes) -> PreferencePair:
    fields = dict(
        id="p1-p0-p1",
        problem_id="p1",
        source="easy-vqa",
        prompt="How many?",
        media_path=None,
        chosen="<think>a</think>1",
        rejected="<think>b</think>2",
        chosen_score=2.0,
        rejected_score=1.0,
        reason="score-gap",
    )
    return PreferencePair(**{**fields, **changes})


def test_pair_suite(gx):
    good = pair_row(make_pair())
    correct_vs_wrong = pair_row(make_pair(id="p2", chosen_score=0.5, reason="correct-vs-wrong"))
    # PreferencePair itself refuses identical responses, so build that row as a dict, as a reader would.
    same = {**pair_row(make_pair(id="p3")), "rejected": "<think>a</think>1"}
    low = pair_row(make_pair(id="p4", chosen_score=0.5))
    blank_prompt = {**pair_row(make_pair(id="p5")), "prompt": ""}
    found = run_suite("pair", [good, correct_vs_wrong, same, low, blank_prompt])
    assert found[0] == [] and found[1] == []
    assert found[2] == ["chosen and rejected are the same response"]
    assert found[3] == ["chosen does not outscore rejected"]
    assert "empty prompt" in found[4]


def test_manifest_suite(gx):
    good = {
        "shard": "stage3-000000.tar",
        "mix": "stage3",
        "sha256": "ab" * 32,
        "num_bytes": 10240,
        "num_records": 3,
        "tokens": 120,
    }
    rows = [
        good,
        {**good, "shard": "stage3-000001.tar", "sha256": "xyz"},
        {**good, "shard": "stage3.v2-1.tar"},
        {**good, "shard": "stage3-000003.tar", "num_records": 0},
    ]
    found = run_suite("manifest", rows)
    assert found[0] == []
    assert found[1] == ["sha256 is not 64 hex digits"]
    assert found[2] == ["shard name is not <mix>-NNNNNN.tar"]
    assert found[3] == ["shard without samples"]
