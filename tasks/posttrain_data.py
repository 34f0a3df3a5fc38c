"""Post-training data made in the chain -> Records -> WebDataset shards the trainer reads (SPEC.md section 4).

The post-training chain makes three sets from its latest checkpoint; each becomes ``Record``s in the
shape ``keye_model/training/examples.py`` reads from a shard's ``json``:

* LongCoT cold-start (``cot_records``): question = the problem, answer = the full response
  ``<think>\\n{reasoning}\\n</think>\\n\\n{answer}`` (the chat template's reasoning form), ``meta`` with
  ``replay_weight`` (the trainer's sample weight), ``quality_score``, ``tier`` and the problem id.
* MPO / reward-model pairs (``pair_records``): question = the prompt, answer = chosen, ``meta`` with
  ``chosen``, ``rejected``, ``reason`` and both ranking scores.
* RL prompts (``rl_prompt_records``): records with a checkable reference answer, ``meta["hints"]`` the
  progressive hints L1..L5 (``rule_hints`` below unless the caller brings its own).

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
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from prefect import task

from data_specs.longcot import CoTSample, PreferencePair, QualityTier, fit_id, read_jsonl, write_jsonl
from data_specs.mixes import DataMix
from data_specs.schemas import MODALITIES, Record
from data_specs.stages import NUM_HINT_LEVELS
from keye_model.answers import parse_number
from keye_model.special_tokens import THINK_END, THINK_START
from tasks.caching import FILE_TASK_OPTIONS
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
def cot_response(sample: CoTSample) -> str:
    """The sample's full response in the chat template's reasoning form; ValueError when malformed."""
    if sample.path.thinking is None or not (sample.path.answer or "").strip():
        raise ValueError(f"sample {sample.id}: response is not '{THINK_START}...{THINK_END}' then an answer")
    return f"{THINK_START}\n{sample.path.thinking.strip()}\n{THINK_END}\n\n{sample.path.answer.strip()}"


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
#: Hints L1..L4 per question kind: L1 a concept or what to observe (no method), L2 a strategy, L3 a tool
#: or rule, L4 the first concrete step. L5, the complete solution, is the reference answer itself.
#: None of L1..L4 depends on the answer, so a lower level never gives it away.
HINTS: dict[str, tuple[str, str, str, str]] = {
    "shape": (
        "Look at the shape's outline: are its sides straight or curved, and does it have corners?",
        "Compare the outline with each candidate shape in turn and rule out those that do not fit.",
        "A circle has no corners, a triangle has three, a rectangle has four right angles.",
        "First find the shape the question asks about, then count its corners.",
    ),
    "color": (
        "Look at the colour the shape is filled with, not at the background.",
        "Compare the fill with the basic colour names and keep the closest one.",
        "Judge the hue first (red, yellow, green, blue, brown), then how light or dark it is (black, gray).",
        "First find the shape, then look at the middle of its fill, away from its edges.",
    ),
    "presence": (
        "The answer turns on whether an object in the image has every property the question names.",
        "Discuss by cases: list what the image shows, then check each item against the description.",
        "A negated question ('is there not ...', 'is no ... present') is yes exactly when nothing matches.",
        "First list every object in the image with its colour and its shape.",
    ),
    "counting": (
        "Every object of the kind asked about counts once, whatever its size or position.",
        "Scan the image in a fixed order, left to right and top to bottom, so nothing is missed or doubled.",
        "Keep a running tally and mark each object as soon as it is counted.",
        "First find the top-left matching object and start the tally at one.",
    ),
    "temporal": (
        "The question is about when something happens: watch how the video changes over time.",
        "Find the frames where the scene or event in question starts and where it ends.",
        "Each frame carries a timestamp; the answer is given in seconds.",
        "First go through the frames in order and note the timestamp of every scene change.",
    ),
    "ocr": (
        "The answer is written in the image.",
        "Locate the text region the question refers to before reading anything.",
        "Read character by character and watch for look-alikes such as 0 and O, 1 and l.",
        "First find the line of text the question refers to.",
    ),
    "grounding": (
        "The question refers to one particular object; where it is matters as much as what it is.",
        "Find every candidate object, then keep the one that matches every word of the description.",
        "Give positions relative to the whole image, from its top-left corner.",
        "First list the objects that could match the description.",
    ),
    "math": (
        "Identify the quantities the problem gives and the one it asks for.",
        "Break the problem into smaller steps and solve them one at a time.",
        "Write the relations between the quantities as equations before computing.",
        "First write down the known values and name the unknown.",
    ),
    "general": (
        "Look closely at the part of the image the question is about.",
        "Rule out the answers that contradict what the image shows.",
        "Check your answer against every detail the question mentions.",
        "First restate in your own words what the question asks for.",
    ),
}
_YES_NO_START = re.compile(r"^(is|are|does|do|did|can|was|were|has|have)\b", re.IGNORECASE)


def hint_kind(record: Record) -> str:
    """Which ``HINTS`` entry fits a record: by task, then by the question's form.

    ``what is the blue shape?`` -> shape, ``what color is the circle?`` -> color, ``is there not a red
    circle?`` -> presence, ``how many ...`` -> counting; reasoning with a numeric answer -> math.
    """
    question = record.question.strip().lower()
    if record.task == "counting" or question.startswith("how many"):
        return "counting"
    if record.task == "temporal_localization":
        return "temporal"
    if record.task in ("ocr", "grounding"):
        return record.task
    if record.task == "reasoning":
        return "math" if parse_number(record.answer) is not None else "general"
    if _YES_NO_START.match(question):
        return "presence"
    if "color" in question or "colour" in question:
        return "color"
    if "shape" in question:
        return "shape"
    return "general"


def rule_hints(record: Record) -> tuple[str, ...]:
    """L1..L5 for a record: the four ``HINTS`` of its kind, then the complete solution (the reference)."""
    return (*HINTS[hint_kind(record)], f"The complete solution: the answer is {record.answer.strip()}")


def _checked_hints(record_id: str, hints: Sequence[str]) -> list[str]:
    well_formed = not isinstance(hints, str) and all(isinstance(h, str) and h.strip() for h in hints)
    if not well_formed or len(hints) > NUM_HINT_LEVELS:
        raise ValueError(
            f"record {record_id}: hints must be at most {NUM_HINT_LEVELS} non-blank strings, got {hints!r}"
        )
    return list(hints)


def rl_prompt_records(
    records: Sequence[Record], hints_by_id: Mapping[str, Sequence[str]] | None = None
) -> list[Record]:
    """RL prompts: records of an ``RL_TASKS`` task with a question and a reference answer, each with
    ``meta["hints"]`` = ``hints_by_id[record.id]`` when given (an empty list means no hints), else
    ``rule_hints(record)``. Other records are skipped (logged)."""
    hints_by_id = dict(hints_by_id or {})
    out = []
    for record in records:
        if record.task not in RL_TASKS or not record.question.strip() or not record.answer.strip():
            continue
        hints = hints_by_id.pop(record.id) if record.id in hints_by_id else rule_hints(record)
        out.append(dataclasses.replace(record, meta={**record.meta, "hints": _checked_hints(record.id, hints)}))
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


@task(name="pair-records", **_TASK_OPTIONS)
def pair_records_task(pairs_path: str, out_path: str) -> str:
    """PreferencePair JSONL -> Record JSONL."""
    return str(write_jsonl(pair_records(read_jsonl(pairs_path, PreferencePair)), out_path))


@task(name="rl-prompt-records", **_TASK_OPTIONS)
def rl_prompt_records_task(records_path: str, out_path: str, hints_path: str | None = None) -> str:
    """Record JSONL -> RL prompt Record JSONL; ``hints_path``: optional JSON ``{record id: [L1, ...]}``."""
    hints = json.loads(Path(hints_path).read_text()) if hints_path else None
    return str(write_jsonl(rl_prompt_records(read_jsonl(records_path, Record), hints), out_path))


@task(name="write-generated-shards", task_run_name="shard-{name}", **_TASK_OPTIONS)
def write_generated_shards_task(records_path: str, name: str, out_dir: str, slow_fast: str = "tiny") -> str:
    """Record JSONL -> shards under ``<out_dir>/<name>/``; returns the manifest path."""
    return write_generated_shards(read_jsonl(records_path, Record), name, out_dir, slow_fast).manifest_path
