"""MPO preference pairs from assessed LongCoT paths (SPEC.md section 4, MPO).

For one prompt, ``chosen`` is a right (reference-matching, or consensus when there is no reference),
well-scored path and ``rejected`` a wrong one (``correct-vs-wrong``) or a right one whose reasoning
scored clearly lower (``score-gap``: at least ``min_score_gap`` below). Pairs are deduplicated on
normalized text, capped per prompt, and balanced across sources.

A weak early model may get a problem wrong on every path: multi-path sampling then has no right path to
choose, and MPO would learn nothing from exactly the problems it most needs. For such a problem, when it
has a reference answer, ``reference_pairs`` choose the reference itself, written as the model would
answer it without thinking (``<think>\\n\\n</think>\\n\\n{reference}``, the no-think form of the chat
template), over each wrong path (``reference-vs-wrong``). This complements the report's pairs, which
come from multi-path sampling; it never replaces them: a problem with a usable right path gets only those.

The built pairs pass the ``pair`` GX suite before they are written (``validated_pairs``): a pair with a blank
or oversized side, a score-gap pair whose chosen does not outscore its rejected, or a repeated id is
quarantined with its reasons beside the pairs file.

The reward model trains on more than MPO's pairs (``build_reward_pairs_task``): judging whether an answer
fits the image is VQA itself, which a few hundred pairs do not teach (held-out 0.50 after 30 or 120 steps
over a run's ~110 pairs; docs/design.md). ``answer_pairs`` make thousands more from the curated records: a
record's short answer over another record's different answer to the same question (``answer-vs-
distractor``). The reward model's annealing set (``reward_anneal_pairs``) is those pairs again plus
``length_bias_pairs``, whose better response is the shorter one (reasons ``LENGTH_BIAS_REASONS``), so the
judge's last pass teaches that length is not quality.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from prefect import task

from data_specs.expectations import pair_row
from data_specs.longcot import CoTSample, PreferenceConfig, PreferencePair, QualityTier, fit_id
from data_specs.schemas import Record
from keye_model.answers import answers_match, join_thinking, split_thinking
from tasks.posttrain_data import RL_TASKS
from tasks.validate import quarantine_beside, quarantine_failures

log = logging.getLogger(__name__)
#: Ranking score given to a reference answer as chosen: the top of the judge's 1-5 rubric.
REFERENCE_SCORE = 5.0


def group_by_problem(samples: Iterable[CoTSample]) -> dict[str, list[CoTSample]]:
    """Kept and rejected samples of the same problem together (pairs need both)."""
    groups: dict[str, list[CoTSample]] = defaultdict(list)
    for s in samples:
        groups[s.problem.id].append(s)
    return dict(groups)


def is_right(sample: CoTSample, min_consensus: float = 0.5) -> bool:
    """Reference match, or without a reference: a well-formed answer most paths agree with."""
    if sample.rules.answer_correct is not None:
        return sample.rules.answer_correct
    return sample.rules.well_formed and sample.path.agreement >= min_consensus


def rank_score(sample: CoTSample) -> float:
    """Judge mean (1 when unjudged); -1 for malformed or repetitive text, -2 when a reviewer rejected it,
    +0.5 when a reviewer edited it."""
    score = sample.verdict.mean if sample.verdict.mean is not None else 1.0
    score -= 1.0 if not sample.rules.well_formed or sample.rules.repetitive else 0.0
    score -= 2.0 if sample.review == "reject" else 0.0
    return score + (0.5 if sample.review == "edit" else 0.0)


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def can_be_chosen(sample: CoTSample) -> bool:
    """A usable right path: right, well formed, not tier C, not rejected by a reviewer, not empty."""
    return (
        is_right(sample)
        and sample.rules.well_formed
        and sample.tier is not QualityTier.C
        and sample.review != "reject"
        and bool(sample.path.text.strip())
    )


def _one_problem(samples: Sequence[CoTSample], where: str):
    problem = samples[0].problem
    if any(s.problem.id != problem.id for s in samples):
        raise ValueError(f"{where}: samples of several problems: {sorted({s.problem.id for s in samples})}")
    return problem


def pairs_for_problem(samples: Sequence[CoTSample], config: PreferenceConfig) -> list[PreferencePair]:
    """The best ``max_pairs_per_prompt`` pairs of one problem: correct-vs-wrong first, then by gap."""
    problem = _one_problem(samples, "pairs_for_problem")
    chosen_pool = [s for s in samples if can_be_chosen(s)]
    candidates = []
    for c in chosen_pool:
        for r in samples:
            if r is c or not r.path.text.strip():
                continue
            gap = rank_score(c) - rank_score(r)
            if not is_right(r):
                candidates.append((0, -gap, c, r, "correct-vs-wrong"))
            elif gap >= config.min_score_gap:
                candidates.append((1, -gap, c, r, "score-gap"))
    candidates.sort(key=lambda t: (t[0], t[1], t[2].id, t[3].id))
    pairs, seen_pairs = [], set()
    for _, _, c, r, reason in candidates:
        key = (_normalized(c.path.text), _normalized(r.path.text))
        if key[0] == key[1] or key in seen_pairs:
            continue
        seen_pairs.add(key)
        pairs.append(
            PreferencePair(
                id=fit_id(f"{problem.id}-{c.id.rsplit('-', 1)[-1]}-{r.id.rsplit('-', 1)[-1]}"),
                problem_id=problem.id,
                source=problem.source,
                prompt=problem.question,
                media_path=problem.media_path,
                chosen=c.path.text,
                rejected=r.path.text,
                chosen_score=rank_score(c),
                rejected_score=rank_score(r),
                reason=reason,
            )
        )
        if len(pairs) == config.max_pairs_per_prompt:
            break
    return pairs


def no_think_response(answer: str) -> str:
    """``answer`` as a full response without reasoning: the chat template's empty thinking block, then it.

    ``"rectangle"`` -> ``"<think>\\n\\n</think>\\n\\nrectangle"`` (what ``keye_model/chat.py`` renders for a
    ``/no_think`` turn), so the chosen response has the same shape as the generated paths it is compared to.
    """
    return join_thinking("", answer)


def reference_pairs(samples: Sequence[CoTSample], config: PreferenceConfig) -> list[PreferencePair]:
    """``reference-vs-wrong`` pairs of one problem: its reference answer (``no_think_response``) over each
    non-empty wrong path; none when the problem has no reference.

    Wrong paths are taken most plausible first (well formed, then by ``rank_score``, then id): a hard
    negative teaches more than a malformed one. Deduplicated on normalized rejected text and capped at
    ``max_reference_pairs_per_prompt`` (the model's own pairs, capped at ``max_pairs_per_prompt``, stay
    the bulk of the set). The chosen score is ``REFERENCE_SCORE``.
    """
    problem = _one_problem(samples, "reference_pairs")
    if problem.reference is None or not problem.reference.strip():
        return []
    chosen = no_think_response(problem.reference)
    wrong = sorted(
        (s for s in samples if not is_right(s) and s.path.text.strip()),
        key=lambda s: (not s.rules.well_formed, -rank_score(s), s.id),
    )
    pairs, seen = [], {_normalized(chosen)}
    for r in wrong:
        key = _normalized(r.path.text)
        if key in seen:
            continue
        seen.add(key)
        pairs.append(
            PreferencePair(
                id=fit_id(f"{problem.id}-ref-{r.id.rsplit('-', 1)[-1]}"),
                problem_id=problem.id,
                source=problem.source,
                prompt=problem.question,
                media_path=problem.media_path,
                chosen=chosen,
                rejected=r.path.text,
                chosen_score=REFERENCE_SCORE,
                rejected_score=rank_score(r),
                reason="reference-vs-wrong",
            )
        )
        if len(pairs) == config.max_reference_pairs_per_prompt:
            break
    return pairs


def balance_sources(
    pairs_by_problem: Mapping[str, list[PreferencePair]], config: PreferenceConfig
) -> list[PreferencePair]:
    """Cap each source at ``source_balance_ratio`` x the smallest non-empty source; within a source the
    cut keeps each prompt's best pairs first (round-robin over prompts by pair rank)."""
    by_source: dict[str, list[list[PreferencePair]]] = defaultdict(list)
    for pid in sorted(pairs_by_problem):
        if pairs_by_problem[pid]:
            by_source[pairs_by_problem[pid][0].source].append(pairs_by_problem[pid])
    if not by_source:
        return []
    counts = {src: sum(map(len, groups)) for src, groups in by_source.items()}
    cap = math.ceil(config.source_balance_ratio * min(counts.values()))
    out = []
    for src in sorted(by_source):
        groups = by_source[src]
        ranked = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
        if len(ranked) > cap:
            log.info("source %s: keeping %d of %d pairs for balance", src, cap, len(ranked))
        out.extend(ranked[:cap])
    return out


def build_preference_pairs(
    paths_by_problem: Mapping[str, Sequence[CoTSample]], config: PreferenceConfig = PreferenceConfig()
) -> list[PreferencePair]:
    """Valid (non-empty, chosen != rejected), deduplicated, per-prompt capped, source-balanced pairs.

    A problem with a usable right path (``can_be_chosen``) gets ``pairs_for_problem``; one without gets
    ``reference_pairs`` (its reference over its wrong paths), which is how MPO gets data from a weak model.
    """
    per_problem = {
        pid: pairs_for_problem(samples, config)
        if any(map(can_be_chosen, samples))
        else reference_pairs(samples, config)
        for pid, samples in paths_by_problem.items()
        if samples
    }
    pairs = balance_sources(per_problem, config)
    ids = [p.id for p in pairs]
    assert len(ids) == len(set(ids)), "preference pair ids collide"
    log.info("built %d preference pairs from %d problems", len(pairs), len(paths_by_problem))
    return pairs


def validated_pairs(pairs: Sequence[PreferencePair], quarantine_path: str | Path) -> list[PreferencePair]:
    """The pairs that pass the ``pair`` suite (one GX run for the batch); the others are appended to
    ``quarantine_path`` with their reasons."""
    return quarantine_failures("pair", pairs, [pair_row(p) for p in pairs], quarantine_path=quarantine_path).passed


@task(name="build-preference-pairs", persist_result=True)
def build_preference_pairs_task(samples_paths: list[str], out_path: str, config: PreferenceConfig) -> str:
    """Reads kept and rejected sample JSONL files, writes the pairs that pass the ``pair`` suite to
    ``out_path`` and the others to ``quarantine_beside(out_path)`` (rewritten each run)."""
    from data_specs.longcot import read_jsonl, write_jsonl

    samples = [s for path in samples_paths for s in read_jsonl(path, CoTSample)]
    quarantine = quarantine_beside(out_path)
    quarantine.unlink(missing_ok=True)
    pairs = validated_pairs(build_preference_pairs(group_by_problem(samples), config), quarantine)
    return str(write_jsonl(pairs, out_path))


# ---- the reward model's answer pairs ------------------------------------------------------------------
#: Reason of an ``answer_pairs`` pair: a record's answer over another record's answer to the same question.
ANSWER_PAIR_REASON = "answer-vs-distractor"
#: Reasons whose rejected side is a wrong answer (``length_bias_pairs`` also pads those: ``padded-wrong``).
WRONG_REJECTED_REASONS = ("correct-vs-wrong", "reference-vs-wrong", ANSWER_PAIR_REASON)
#: Longest final answer, in words, an answer pair is made from: short answers are what the matcher checks.
MAX_ANSWER_WORDS = 3


def answer_pairs(records: Sequence[Record], num_pairs: int, seed: int = 0) -> list[PreferencePair]:
    """Up to ``num_pairs`` pairs from curated records with a short checkable answer (``RL_TASKS``, final
    answer of at most ``MAX_ANSWER_WORDS`` words): chosen = the record's answer, rejected = a distractor,
    the answer of another record with the same question (case and spacing aside) that the answer matcher
    does not accept for this one; both in the no-think form (``no_think_response``).

    Same question text means same kind of answer ("what color is the shape?" gets a colour, "is there a
    circle?" yes or no), so the judge must look at the image, not at the kind of answer. A record whose
    question no other record answers differently makes no pair. Drawn by ``seed``; ids ``<record>-ans``.
    Example: records "what color is the shape?" -> "red" (image 1) and -> "blue" (image 2) make "red" over
    "blue" for image 1 and "blue" over "red" for image 2.
    """
    answers_by_question: dict[str, set[str]] = defaultdict(set)
    eligible = []
    for r in records:
        _, answer = split_thinking(r.answer)
        answer = answer.strip()
        if r.task in RL_TASKS and r.question.strip() and answer and len(answer.split()) <= MAX_ANSWER_WORDS:
            question = _normalized(r.question)
            eligible.append((r, question, answer))
            answers_by_question[question].add(answer)
    # a few dozen distinct (question, answer) pairs among tens of thousands of records: match each once
    distractors_of = {
        (question, answer): sorted(a for a in answers if not answers_match(a, answer))
        for question, answers in answers_by_question.items()
        for answer in answers
    }
    rng = random.Random(seed)
    usable = [(r, a, distractors_of[q, a]) for r, q, a in eligible if distractors_of[q, a]]
    picked = sorted(rng.sample(range(len(usable)), min(num_pairs, len(usable))))
    log.info(
        "answer pairs: %d of %d records with a short answer have a distractor; %d drawn",
        len(usable),
        len(eligible),
        len(picked),
    )
    return [
        PreferencePair(
            id=fit_id(f"{r.id}-ans"),
            problem_id=r.id,
            source=r.source,
            prompt=r.question,
            media_path=r.media_path,
            chosen=no_think_response(answer),
            rejected=no_think_response(rng.choice(distractors)),
            chosen_score=REFERENCE_SCORE,
            rejected_score=1.0,
            reason=ANSWER_PAIR_REASON,
        )
        for r, answer, distractors in (usable[i] for i in picked)
    ]


@task(name="build-reward-pairs", persist_result=True)
def build_reward_pairs_task(
    pairs_path: str, records_path: str, out_path: str, num_answer_pairs: int, seed: int = 0
) -> tuple[str, int]:
    """Preference pair JSONL + curated record JSONL -> the reward model's pairs (MPO's, then ``answer_pairs``)
    as pair JSONL; returns its path and how many answer pairs it holds (0 when no record made one)."""
    from data_specs.longcot import read_jsonl, write_jsonl

    mpo, records = read_jsonl(pairs_path, PreferencePair), read_jsonl(records_path, Record)
    answers = answer_pairs(records, num_answer_pairs, seed)
    return str(write_jsonl([*mpo, *answers], out_path)), len(answers)


# ---- the reward model's length-bias annealing set -----------------------------------------------------
#: Reasons of the pairs whose better answer is the shorter one (SPEC.md, Keye-Reward's annealing pass):
#: ``padded-right``, a right response over the same response padded with filler (both right: length alone
#: must not win); ``padded-wrong``, a right response over a wrong one padded to be longer.
LENGTH_BIAS_REASONS = ("padded-right", "padded-wrong")
#: Sentences that lengthen a response and add nothing. Held-out evaluation pads with sentences of its own
#: (``tasks/evaluation/reward_eval.py``), so the judge is scored on length, not on these words.
FILLER = (
    "I looked at the whole image carefully before answering.",
    "This is my final answer to the question.",
    "Every part of the picture was taken into account here.",
    "The answer above follows from what the image shows.",
    "I went over the question twice to be sure of it.",
    "No other detail of the scene changes this answer.",
)


def padded(response: str, rng: random.Random, filler: Sequence[str] = FILLER, num_sentences: int = 3) -> str:
    """``response`` followed by ``num_sentences`` distinct filler sentences (after its answer).

    ``padded("yes", rng, num_sentences=1)`` -> ``"yes. This is my final answer to the question."``
    """
    base = response.rstrip()
    base = base if base.endswith((".", "!", "?")) else f"{base}."
    return " ".join([base, *rng.sample(list(filler), num_sentences)])


def length_bias_pairs(pairs: Sequence[PreferencePair], seed: int = 0) -> list[PreferencePair]:
    """Per pair, ``padded-right`` (chosen over chosen padded) and, when the rejected side is wrong
    (``WRONG_REJECTED_REASONS``), ``padded-wrong`` (chosen over rejected padded).

    Every pair made here has its better response strictly shorter than its worse one. Ids are the source
    pair's id with ``-pr`` / ``-pw``; the padded side scores one below the side it pads.
    """
    rng = random.Random(seed)
    out = []
    for p in pairs:
        sides = [("padded-right", p.chosen, p.chosen_score, "pr")]
        if p.reason in WRONG_REJECTED_REASONS:
            sides.append(("padded-wrong", p.rejected, p.rejected_score, "pw"))
        for reason, worse, score, suffix in sides:
            rejected = padded(worse, rng)
            if len(rejected) <= len(p.chosen):
                continue  # a long wrong path padded may still not be the longer side: not a length-bias pair
            out.append(
                dataclasses.replace(
                    p,
                    id=fit_id(f"{p.id}-{suffix}"),
                    rejected=rejected,
                    rejected_score=score - 1.0,
                    reason=reason,
                )
            )
    return out


def reward_anneal_pairs(pairs: Sequence[PreferencePair], seed: int = 0) -> list[PreferencePair]:
    """The annealing set: every pair again (so the judge does not learn "shorter wins") and, after them,
    ``length_bias_pairs``; logs how many of each reason."""
    anneal = [*pairs, *length_bias_pairs(pairs, seed)]
    counts = Counter(p.reason for p in anneal)
    log.info(
        "reward annealing set: %d pairs, %d where the better answer is the shorter one (%s)",
        len(anneal),
        sum(counts[r] for r in LENGTH_BIAS_REASONS),
        dict(sorted(counts.items())),
    )
    return anneal


@task(name="build-reward-anneal-pairs", persist_result=True)
def build_reward_anneal_pairs_task(pairs_path: str, out_path: str, seed: int = 0) -> str:
    """Preference pair JSONL -> the reward model's annealing set (``reward_anneal_pairs``) as pair JSONL."""
    from data_specs.longcot import read_jsonl, write_jsonl

    return str(write_jsonl(reward_anneal_pairs(read_jsonl(pairs_path, PreferencePair), seed), out_path))
