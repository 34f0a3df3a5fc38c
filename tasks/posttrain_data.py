"""Post-training data made in the chain -> Records -> WebDataset shards the trainer reads (SPEC.md section 4).

The post-training chain makes three sets from its latest checkpoint; each becomes ``Record``s in the
shape ``keye_model/training/examples.py`` reads from a shard's ``json``:

* LongCoT cold-start (``cot_records``): question = the problem, answer = the full response
  ``<think>\\n{reasoning}\\n</think>\\n\\n{answer}`` (the chat template's reasoning form), ``meta`` with
  ``replay_weight`` (the trainer's sample weight), ``quality_score``, ``tier`` and the problem id; the
  cold-start set also mixes in records of the SFT mix as they are (``mix_in``, ``meta["mixed_in_from"]``).
* MPO / reward-model pairs (``pair_records``): question = the prompt, answer = chosen, ``meta`` with
  ``chosen``, ``rejected``, ``reason`` and both ranking scores.
* RL prompts (``rl_prompt_records``): records with a checkable reference answer, ``meta["hints"]`` the
  progressive hints L1..L5 (``tasks.hints.rule_hints`` unless the caller brings its own).

``write_generated_shards`` validates a set with the record GX suite (bad records are quarantined, not
lost), then shards it under a mix whose planned token shares ARE the set's own shares by modality
(``generated_mix``): these sets are not resampled toward a target mix, every record is written exactly
once, and the manifest's planned and realized shares agree by construction. ``shard_stage`` runs the
``manifest`` suite on the set's shards as on every mix's (a failing shard is quarantined, not listed).

The ``*_task`` entry points take and return paths (JSONL in, JSONL or manifest out) and are cached by
the content of their input files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import task

from data_specs.longcot import CoTSample, PreferencePair, QualityTier, fit_id, read_jsonl, write_jsonl
from data_specs.mixes import DataMix
from data_specs.schemas import MODALITIES, Record
from data_specs.stages import NUM_HINT_LEVELS
from keye_model.answers import join_thinking
from keye_model.special_tokens import THINK_END, THINK_START
from tasks.caching import FILE_TASK_OPTIONS
from tasks.hints import leaking_levels, rule_hints
from tasks.shards import ShardConfig, StageShards, Tokenizer, estimate_samples, shard_stage
from tasks.sources.local_folder import modality_of
from tasks.validate import validate_records

log = logging.getLogger(__name__)

#: Record tasks whose answer a rule can check, so they make RL prompts (captions and free instructions
#: have no single right answer: alignment RL scores those with a judge or the reward model).
RL_TASKS = ("vqa", "counting", "ocr", "grounding", "reasoning", "temporal_localization")


def _modality(media_path: str | None, where: str) -> str:
    if media_path is None:
        return "text"
    found = modality_of(Path(media_path))
    if found is None:
        raise ValueError(f"{where}: media {media_path!r} is neither an image nor a video")
    return found


# ---- LongCoT cold-start -------------------------------------------------------------------------------
def user_turn(record: Record) -> list[dict[str, Any]]:
    """A record's question as the conversation to answer: one user turn, its image or video (if any) first."""
    media = [{"type": record.modality, record.modality: record.media_path}] if record.media_path else []
    return [{"role": "user", "content": [*media, {"type": "text", "text": record.question}]}]


def cot_response(sample: CoTSample) -> str:
    """The sample's full response in the chat template's reasoning form; ValueError when malformed."""
    if sample.path.thinking is None or not (sample.path.answer or "").strip():
        raise ValueError(f"sample {sample.id}: response is not '{THINK_START}...{THINK_END}' then an answer")
    return join_thinking(sample.path.thinking, sample.path.answer)


def cot_records(samples: Sequence[CoTSample]) -> list[Record]:
    """Kept (tier A/B, not rejected by review) samples as ``reasoning`` records; ValueError naming a
    sample that should not be trained on (tier C, reviewer reject, malformed response)."""
    records = []
    for s in samples:
        if s.tier is QualityTier.C or s.review == "reject":
            raise ValueError(f"sample {s.id}: tier {s.tier.value}, review {s.review}: not a cold-start sample")
        problem = s.problem
        records.append(
            Record(
                id=fit_id(s.id),
                source=problem.source,
                modality=_modality(problem.media_path, f"sample {s.id}"),
                task="reasoning",
                question=problem.question,
                answer=cot_response(s),
                media_path=problem.media_path,
                meta={
                    "problem_id": problem.id,
                    "record_id": problem.record_id,
                    "category": problem.category,
                    "reference": problem.reference,
                    "tier": s.tier.value,
                    "review": s.review,
                    "quality_score": s.quality_score,
                    "replay_weight": s.replay_weight,
                },
            )
        )
    return records


#: ``meta`` key of a record mixed into a generated set from a curated mix: that mix's name.
MIXED_IN_FROM = "mixed_in_from"


def mix_in(
    records: Sequence[Record], pool: Sequence[Record], share: float, pool_mix: str, seed: int = 0
) -> list[Record]:
    """``records`` plus records drawn from ``pool`` so that they are ``share`` of the result, each marked
    ``meta[MIXED_IN_FROM] = pool_mix``. The draw (seeded) is over the pool's samples, so a record the mix
    repeats is as likely as its repeats make it; drawn ids are distinct and none is already in ``records``.
    Example: 100 records, share 1/3 -> 50 drawn (fewer when the pool runs out, which is logged); no
    records -> none drawn.

    The cold-start set mixes in the SFT mix this way, as Keye-VL's cold-start mixes non-reasoning data
    with its reasoning data: on its LongCoT samples alone, demo-long's cold-start model lost the direct
    answers SFT taught (held-out accuracy 0.948 -> 0.727, negated yes/no questions 0.98-1.00 -> 0.18-0.22,
    answered with broken reasoning); with a third mixed in, 0.913 / 0.957 / 0.927 over three draws.
    """
    if not 0 <= share < 1:
        raise ValueError(f"mix-in share must be in [0, 1), got {share}")
    wanted = round(len(records) * share / (1 - share))
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    taken, drawn = {r.id for r in records}, []
    for index in order:
        if len(drawn) == wanted:
            break
        if pool[index].id not in taken:
            taken.add(pool[index].id)
            drawn.append(pool[index])
    if len(drawn) < wanted:
        log.warning("mixing in %s: %d records wanted, the pool has %d", pool_mix, wanted, len(drawn))
    return [*records, *(dataclasses.replace(r, meta={**r.meta, MIXED_IN_FROM: pool_mix}) for r in drawn)]


def shard_records(shards: Sequence[str]) -> list[Record]:
    """The records in a mix's WebDataset ``shards``, one per sample: a record the mix repeats comes back as
    often as the mix holds it."""
    from keye_model.training.loader import read_shard, sample_record

    fields = {f.name for f in dataclasses.fields(Record)}
    return [
        Record(**{k: v for k, v in sample_record(sample).items() if k in fields})
        for shard in shards
        for sample in read_shard(shard)
    ]


# ---- MPO / reward-model pairs -------------------------------------------------------------------------
def pair_records(pairs: Sequence[PreferencePair]) -> list[Record]:
    """Pairs as ``reasoning`` records (they come from LongCoT problems): answer = chosen, so SFT-style
    readers see the preferred response; ``meta`` carries both sides for the MPO and judge objectives."""
    return [
        Record(
            id=fit_id(p.id),
            source=p.source,
            modality=_modality(p.media_path, f"pair {p.id}"),
            task="reasoning",
            question=p.prompt,
            answer=p.chosen,
            media_path=p.media_path,
            meta={
                "problem_id": p.problem_id,
                "chosen": p.chosen,
                "rejected": p.rejected,
                "reason": p.reason,
                "chosen_score": p.chosen_score,
                "rejected_score": p.rejected_score,
            },
        )
        for p in pairs
    ]


# ---- RL prompts and progressive hints -----------------------------------------------------------------
def _checked_hints(record_id: str, hints: Sequence[str], answer: str) -> list[str]:
    well_formed = not isinstance(hints, str) and all(isinstance(h, str) and h.strip() for h in hints)
    if not well_formed or len(hints) > NUM_HINT_LEVELS:
        raise ValueError(
            f"record {record_id}: hints must be at most {NUM_HINT_LEVELS} non-blank strings, got {hints!r}"
        )
    leaks = leaking_levels(list(hints), answer)
    if leaks:
        raise ValueError(f"record {record_id}: hint levels {leaks} state the answer {answer!r} (only L5 may)")
    return list(hints)


def rl_prompt_records(
    records: Sequence[Record],
    hints_by_id: Mapping[str, Sequence[str]] | None = None,
    *,
    limit: int | None = None,
    seed: int = 0,
) -> list[Record]:
    """RL prompts: records of an ``RL_TASKS`` task with a question and a reference answer, each with
    ``meta["hints"]`` = ``hints_by_id[record.id]`` when given (an empty list means no hints), else
    ``rule_hints(record)`` (from the image's facts where the data set knows them, ``tasks.hints``).
    ``limit``: at most that many, drawn by ``seed`` (in input order) before any hint is made -- checking
    hints costs milliseconds a prompt, and the pass-rate filter reads a few dozen of 40k candidates.
    ValueError when a given hint below L5 states the record's answer. Other records are skipped (logged)."""
    hints_by_id = dict(hints_by_id or {})
    eligible = [r for r in records if r.task in RL_TASKS and r.question.strip() and r.answer.strip()]
    if limit is not None and limit < len(eligible):
        eligible = [eligible[i] for i in sorted(random.Random(seed).sample(range(len(eligible)), limit))]
    out = []
    for record in eligible:
        hints = hints_by_id.pop(record.id) if record.id in hints_by_id else rule_hints(record)
        checked = _checked_hints(record.id, hints, record.answer)
        out.append(dataclasses.replace(record, meta={**record.meta, "hints": checked}))
    if hints_by_id:
        log.warning("hints given for %d records that are not RL prompts: %s", len(hints_by_id), sorted(hints_by_id)[:5])
    log.info("%d RL prompts from %d records", len(out), len(records))
    return out


# ---- mix and shards -----------------------------------------------------------------------------------
def generated_mix(name: str, records: Sequence[Record], tokens_of: Callable[[Record], int]) -> DataMix:
    """A mix whose planned token share per modality is the set's own (``tokens_of`` per record).

    Generated sets are used as generated, not resampled: planned == realized. Example: 3 image records
    of 30 tokens and 2 text records of 5 -> ``{"image": 0.9, "text": 0.1}``.
    """
    tokens: Counter[str] = Counter()
    for record in records:
        tokens[record.modality] += tokens_of(record)
    total = sum(tokens.values())
    if total <= 0:
        raise ValueError(f"generated set {name!r}: no tokens in {len(records)} records")
    return DataMix(name=name, modality_ratios={m: tokens[m] / total for m in MODALITIES if tokens[m] > 0})


def write_generated_shards(
    records: Sequence[Record],
    name: str,
    out_dir: str | Path,
    slow_fast: str = "tiny",
    *,
    tokenizer: Tokenizer | None = None,
) -> StageShards:
    """Validate ``records`` (record GX suite + decode checks; bad ones go to ``<out_dir>/<name>/quarantine.jsonl``,
    rewritten each run), then write every passing record once into ``<out_dir>/<name>/`` under
    ``generated_mix``. ValueError when nothing passes."""
    config = ShardConfig(mix=name, out_dir=str(out_dir), slow_fast=slow_fast)
    quarantine = Path(out_dir) / name / "quarantine.jsonl"
    quarantine.unlink(missing_ok=True)
    report = validate_records(records, quarantine_path=quarantine)
    if not report.passed:
        raise ValueError(f"generated set {name!r}: all {len(records)} records quarantined, see {quarantine}")
    estimated = estimate_samples(report.passed, config, tokenizer)
    mix = generated_mix(name, report.passed, lambda r: estimated[r.id].tokens)
    # The exact total as target: every record once, no float slack that would add a repeat.
    config = dataclasses.replace(config, target_tokens=sum(s.tokens for s in estimated.values()))
    return shard_stage(report.passed, mix, config, tokenizer=tokenizer)


# ---- Prefect entry points: paths in, paths out, cached by input file contents -------------------------
_TASK_OPTIONS = FILE_TASK_OPTIONS


@task(name="cot-records", **_TASK_OPTIONS)
def cot_records_task(samples_path: str, out_path: str) -> str:
    """Kept CoTSample JSONL -> Record JSONL."""
    return str(write_jsonl(cot_records(read_jsonl(samples_path, CoTSample)), out_path))


@task(name="mix-in-records", **_TASK_OPTIONS)
def mix_in_task(
    records_path: str, pool_paths: list[str], share: float, pool_mix: str, out_path: str, seed: int = 0
) -> str:
    """Record JSONL plus records drawn from ``pool_paths``, the shards of mix ``pool_mix`` (``mix_in``) -> Record
    JSONL."""
    records = read_jsonl(records_path, Record)
    pool = shard_records(pool_paths) if records and share else []
    return str(write_jsonl(mix_in(records, pool, share, pool_mix, seed), out_path))


@task(name="pair-records", **_TASK_OPTIONS)
def pair_records_task(pairs_path: str, out_path: str) -> str:
    """PreferencePair JSONL -> Record JSONL."""
    return str(write_jsonl(pair_records(read_jsonl(pairs_path, PreferencePair)), out_path))


@task(name="rl-prompt-records", **_TASK_OPTIONS)
def rl_prompt_records_task(
    records_path: str, out_path: str, hints_path: str | None = None, limit: int | None = None, seed: int = 0
) -> str:
    """Record JSONL -> RL prompt Record JSONL (``limit`` of them, drawn by ``seed``); ``hints_path``:
    optional JSON ``{record id: [L1, ...]}``."""
    hints = json.loads(Path(hints_path).read_text()) if hints_path else None
    records = rl_prompt_records(read_jsonl(records_path, Record), hints, limit=limit, seed=seed)
    return str(write_jsonl(records, out_path))


@task(name="write-generated-shards", task_run_name="shard-{name}", **_TASK_OPTIONS)
def write_generated_shards_task(records_path: str, name: str, out_dir: str, slow_fast: str = "tiny") -> str:
    """Record JSONL -> shards under ``<out_dir>/<name>/``; returns the manifest path."""
    return write_generated_shards(read_jsonl(records_path, Record), name, out_dir, slow_fast).manifest_path
