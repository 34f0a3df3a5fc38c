"""Every Great Expectations suite runs on the data the pipeline makes (issue 11 item 11): the LongCoT samples
(``score_samples_task``), the preference pairs (``build_preference_pairs_task``) and each mix's shards
(``shard_stage``). A bad item is quarantined with its reasons and a detail naming it; good ones pass on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import webdataset as wds

from data_specs.expectations import MAX_TEXT_CHARS
from data_specs.longcot import CoTPath, LongCoTConfig, PreferenceConfig, QualityTier, RuleReport, write_jsonl
from data_specs.mixes import DataMix
from data_specs.schemas import Record
from tasks.layout import read_mix_shards
from tasks.longcot import score_samples_task
from tasks.preference import build_preference_pairs_task
from tasks.shards import ShardConfig, quarantine_bad_shards, shard_stage
from tasks.validate import quarantine_beside
from tests.data_specs.test_expectations import make_cot


@pytest.fixture(scope="module")
def gx():
    """Great Expectations, imported once for the module (it takes seconds)."""
    import great_expectations

    return great_expectations


def quarantined(path: Path) -> dict[str, dict]:
    return {line["id"]: line for line in map(json.loads, path.read_text().splitlines())}


def test_scored_longcot_samples_that_fail_the_cot_suite_are_quarantined(tmp_path, gx):
    samples = [
        make_cot(id="good-a"),
        make_cot(id="good-b", tier=QualityTier.B, review="approve"),
        make_cot(id="unreviewed-b", tier=QualityTier.B),  # the review step was skipped for it
        make_cot(id="tier-c", tier=QualityTier.C),
        make_cot(id="rejected", tier=QualityTier.B, review="reject"),
    ]
    kept_path = write_jsonl(samples, tmp_path / "reviewed.jsonl")
    out = tmp_path / "cot_samples.jsonl"
    score_samples_task.fn(str(kept_path), str(out), LongCoTConfig())
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["good-a", "good-b"]
    lines = quarantined(quarantine_beside(out))
    assert {k: v["reasons"] for k, v in lines.items()} == {
        "unreviewed-b": ["tier-B sample not reviewed"],
        "tier-c": ["tier is not A or B"],
        "rejected": ["review rejected the sample"],
    }
    assert all(line["kind"] == "cot" and key in line["problems"][0]["detail"] for key, line in lines.items())
    assert all(line["record"]["quality_score"] in range(1, 6) for line in lines.values())  # scored, then checked

    # A rerun rewrites the quarantine file: nothing is listed twice.
    score_samples_task.fn(str(kept_path), str(out), LongCoTConfig())
    assert len(quarantine_beside(out).read_text().splitlines()) == 3


def _path(sample_id: str, text: str, answer: str) -> CoTPath:
    return CoTPath(
        id=sample_id,
        problem_id="p1",
        text=f"<think>{text}</think>{answer}",
        thinking=text,
        answer=answer,
        finish_reason="stop",
        num_tokens=6,
        mean_logprob=-0.2,
        step_min_logprob=-0.3,
        agreement=0.5,
    )


def test_preference_pairs_that_fail_the_pair_suite_are_quarantined(tmp_path, gx):
    wrong = RuleReport(well_formed=True, answer_correct=False, length_ok=True, repetitive=False, num_steps=1)
    samples = [
        make_cot(id="p1-p0"),
        make_cot(id="p1-p1", path=_path("p1-p1", "two shapes", "2"), rules=wrong),
        # A runaway generation: a wrong path longer than any context the model trains on.
        make_cot(id="p1-p2", path=_path("p1-p2", "three " * (MAX_TEXT_CHARS // 6 + 1), "3"), rules=wrong),
    ]
    samples_path = write_jsonl(samples, tmp_path / "cot_samples.jsonl")
    out = tmp_path / "pairs.jsonl"
    build_preference_pairs_task.fn([str(samples_path)], str(out), PreferenceConfig())
    passed = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(p["reason"], p["rejected"]) for p in passed] == [("correct-vs-wrong", "<think>two shapes</think>2")]
    (line,) = quarantined(quarantine_beside(out)).values()
    assert line["kind"] == "pair" and line["reasons"] == [f"rejected longer than {MAX_TEXT_CHARS} characters"]
    assert line["id"] == "p1-p0-p2" and line["id"] in line["problems"][0]["detail"]


def text_records(n: int) -> list[Record]:
    return [
        Record(
            id=f"t-{i}",
            source="text-instructions",
            modality="text",
            task="instruction",
            question=f"Say {i}.",
            answer=f"{i}",
        )
        for i in range(n)
    ]


def test_every_written_shard_passes_the_manifest_suite(tmp_path, gx):
    config = ShardConfig(mix="plain", out_dir=str(tmp_path), max_records_per_shard=2)
    result = shard_stage(text_records(5), DataMix(name="plain", modality_ratios={"text": 1.0}), config)
    assert len(result.shards) == 3 and result.num_records == 5
    assert not (tmp_path / "plain" / "quarantine").exists()
    assert len(read_mix_shards(str(tmp_path), "plain").paths) == 3


def test_a_shard_failing_the_manifest_suite_is_moved_out_and_not_listed(tmp_path, gx):
    config = ShardConfig(mix="plain", out_dir=str(tmp_path), max_records_per_shard=2)
    result = shard_stage(text_records(5), DataMix(name="plain", modality_ratios={"text": 1.0}), config)
    first, second, third = result.shards
    # What a bug in the writer would hand over: a shard without tokens, one with a garbled digest.
    bad = [dataclasses.replace(first, tokens=0), second, dataclasses.replace(third, sha256="not-hex")]
    kept = quarantine_bad_shards("plain", bad)
    assert kept == [second]
    folder = tmp_path / "plain" / "quarantine"
    lines = quarantined(folder / "shards.jsonl")
    assert {k: v["reasons"] for k, v in lines.items()} == {
        first.name: ["shard without tokens"],
        third.name: ["sha256 is not 64 hex digits"],
    }
    assert all(line["kind"] == "manifest" and key in line["problems"][0]["detail"] for key, line in lines.items())
    # Moved out of the shard names a reader globs for, into quarantine/ where a person can look at them.
    assert sorted(p.name for p in (tmp_path / "plain").glob("plain-*.tar")) == [second.name]
    assert sorted(p.name for p in folder.glob("*.tar")) == sorted([first.name, third.name])
    assert len(list(wds.WebDataset(str(folder / first.name), shardshuffle=False))) == first.num_records

    # Sharding the mix again clears the last run's quarantine along with its shards.
    shard_stage(text_records(5), DataMix(name="plain", modality_ratios={"text": 1.0}), config)
    assert not list(folder.iterdir())


def test_no_shard_passing_names_the_mix(tmp_path, gx):
    config = ShardConfig(mix="plain", out_dir=str(tmp_path))
    (only,) = shard_stage(text_records(2), DataMix(name="plain", modality_ratios={"text": 1.0}), config).shards
    with pytest.raises(ValueError, match="mix plain: every shard failed the manifest suite"):
        quarantine_bad_shards("plain", [dataclasses.replace(only, num_records=0)])
