"""Shard samples -> conversations for each objective.

A shard sample is what ``tasks/shards.py`` writes: ``<key>.json`` (the record: question, answer,
modality, task, meta; in ``meta``, preference samples carry ``chosen`` and ``rejected`` and LongCoT
samples a ``replay_weight``), the media as encoded bytes (``<key>.png``/``.jpg`` or the video file ``<key>.mp4``)
and, for a video, its Slow-Fast plan (``<key>.plan.json``). Videos are written once to a cache folder
because ffmpeg reads files.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_specs.longcot import REWARD_MODEL_DIMENSIONS
from keye_model.rewards import Constraint
from keye_model.slow_fast import VideoPlan
from keye_model.training.loader import media_of, open_image, sample_name, sample_record
from keye_model.training.rl import RLPrompt

Conversation = list[dict[str, Any]]


@dataclass
class Example:
    sample_id: str
    record: dict[str, Any]
    user_parts: list[dict[str, Any]]
    """The user turn's content: media part (if any) then the question text."""

    @property
    def meta(self) -> dict[str, Any]:
        return self.record.get("meta") or {}

    @property
    def weight(self) -> float:
        return float(self.meta.get("replay_weight", 1.0))

    def conversation(self, answer: str) -> Conversation:
        return [{"role": "user", "content": self.user_parts}, {"role": "assistant", "content": answer}]


def to_example(sample: dict[str, Any], media_cache: str | Path) -> Example:
    """Decode what the processor needs from a raw shard sample."""
    record = sample_record(sample)
    key = sample["__key__"]
    parts: list[dict[str, Any]] = []
    media = media_of(sample)
    if media is not None:
        kind, ext, data = media
        if kind == "image":
            parts.append({"type": "image", "image": open_image(data, sample_name(sample))})
        else:
            path = Path(media_cache) / f"{key}.{ext}"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".part")
                tmp.write_bytes(data)
                tmp.replace(path)
            part: dict[str, Any] = {"type": "video", "video": str(path)}
            if "plan.json" in sample:
                part["plan"] = VideoPlan.from_json(sample["plan.json"].decode())
            parts.append(part)
    question = record.get("question") or "Describe this."
    parts.append({"type": "text", "text": question})
    return Example(sample_id=key, record=record, user_parts=parts)


def sft_conversation(example: Example) -> Conversation:
    return example.conversation(example.record["answer"])


def preference_conversations(example: Example) -> tuple[Conversation, Conversation]:
    """(chosen, rejected) conversations of a preference sample."""
    try:
        return example.conversation(example.meta["chosen"]), example.conversation(example.meta["rejected"])
    except KeyError as exc:
        raise ValueError(f"sample {example.sample_id} is not a preference pair (no {exc})") from exc


#: The task a judge prompt names for preference pairs: ``tasks/posttrain_data.py`` writes pairs as
#: ``reasoning`` records (they come from LongCoT problems), so every reader of the judge uses the same word.
PAIR_TASK = "reasoning"


def judge_prompt(task: str, question: str, first: str, second: str, think: bool = False) -> str:
    """The pairwise judging prompt; ``no_think``: answer "A" or "B"; ``think``: assess, then answer."""
    mode = "Assess both responses, then answer A or B. /think" if think else "Answer A or B. /no_think"
    return (
        f"Task: {task}\nQuery: {question}\nResponse A: {first}\nResponse B: {second}\n"
        f"Which response is better? Consider {', '.join(REWARD_MODEL_DIMENSIONS)}. {mode}"
    )


def judge_assessment(meta: dict[str, Any], better: str) -> str:
    """The reasoning a ``think`` judgment is trained on, from what curation recorded about the pair.

    Our choice (the report trains it by SFT then RL): a short assessment that names the deciding
    dimension for the pair's ``reason`` and says the others do not change the outcome, e.g. for a
    ``correct-vs-wrong`` pair with A better: "Correctness: Response A's answer is right and Response B's is
    wrong. Credibility, relevance, redundancy, completeness, clarity, instruction following, visual
    grounding and safety do not change that." Short on purpose: a judge's RL rollouts must reach the verdict.
    """
    worse = "B" if better == "A" else "A"
    reason = meta.get("reason", "preference")
    deciding = {
        "correct-vs-wrong": f"Correctness: Response {better}'s answer is right and Response {worse}'s is wrong",
        "reference-vs-wrong": f"Correctness: Response {better}'s answer is right and Response {worse}'s is wrong",
        "answer-vs-distractor": f"Correctness: Response {better}'s answer is right and Response {worse}'s is wrong",
        "score-gap": f"Credibility: both answers agree, but Response {better}'s reasoning is sounder",
        "padded-right": f"Redundancy: both are right; Response {better} is concise, Response {worse} adds filler",
        "padded-wrong": f"Correctness: Response {better} is right; Response {worse} is longer, and wrong",
    }.get(reason, f"Overall: Response {better} is better")
    others = [d for d in REWARD_MODEL_DIMENSIONS if not deciding.lower().startswith(d)]
    return f"{deciding}. {', '.join(others[:-1]).capitalize()} and {others[-1]} do not change that."


def _pair_sides(example: Example) -> tuple[str, str]:
    try:
        return example.meta["chosen"], example.meta["rejected"]
    except KeyError as exc:
        raise ValueError(f"sample {example.sample_id} is not a preference pair (no {exc})") from exc


def judge_turn(example: Example, first: str, second: str, think: bool) -> dict[str, Any]:
    """The user turn asking the judge about (first, second) for a pair sample: its media, then the prompt."""
    media = [p for p in example.user_parts if p["type"] != "text"]
    text = judge_prompt(example.record.get("task", PAIR_TASK), example.record.get("question", ""), first, second, think)
    return {"role": "user", "content": [*media, {"type": "text", "text": text}]}


def judge_conversations(example: Example) -> list[Conversation]:
    """Pairwise judge training data: both orders (against position bias) in both modes.

    ``no_think``: the answer is the letter of the better (chosen) response. ``think``: a reasoning block
    assessing the two along the judging dimensions, then the letter.
    """
    chosen, rejected = _pair_sides(example)
    out = []
    for think in (False, True):
        for a, b, verdict in ((chosen, rejected, "A"), (rejected, chosen, "B")):
            answer: dict[str, Any] = {"role": "assistant", "content": verdict}
            if think:
                answer["reasoning_content"] = judge_assessment(example.meta, verdict)
            out.append([judge_turn(example, a, b, think), answer])
    return out


def judge_rl_prompts(example: Example) -> list[RLPrompt]:
    """The judging prompts of one pair for the reward model's RL stage: the pair in both orders, in one mode;
    each reference is the better response's letter (scored by ``keye_model.training.judge.verdict_reward``).

    Both orders go into the same step, so every step rewards "A" and "B" equally often: a step of pairs
    asked one way each rewarded one letter more by chance (8 of 12 prompts "B" in demo-long seed 2's
    6 steps), and a judge whose think-mode margins are thin became a constant "B" after them, even at
    1e-5. The mode comes from a hash of the sample id (``think`` when bit 1 is set), so a pair is asked
    the same way on every pass and the set covers both modes about equally. Ids: ``<sample id>-A`` (the
    better response first) and ``<sample id>-B``.
    """
    chosen, rejected = _pair_sides(example)
    think = bool(zlib.crc32(example.sample_id.encode()) & 2)
    return [
        RLPrompt(
            id=f"{example.sample_id}-{letter}",
            conversation=[judge_turn(example, first, second, think)],
            reference=letter,
            thinking=think,
        )
        for first, second, letter in ((chosen, rejected, "A"), (rejected, chosen, "B"))
    ]


def rl_prompt(example: Example) -> RLPrompt:
    """An RL prompt from a record: its question (with media) and reference answer; hints from meta.

    Alignment prompts (``tasks/alignment_prompts.py``) carry ``meta["constraints"]`` ([{kind, params}])
    and ``meta["rl_reference"]``: the reference to score against, null for free-form answers.
    """
    meta = example.meta
    reference = meta["rl_reference"] if "rl_reference" in meta else example.record.get("answer")
    return RLPrompt(
        id=example.sample_id,
        conversation=[{"role": "user", "content": example.user_parts}],
        reference=reference or None,
        hints=tuple(meta.get("hints", ()))[:5],
        constraints=tuple(Constraint(**c) for c in meta.get("constraints", ())),
    )
