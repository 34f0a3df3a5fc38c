"""Shard samples -> conversations for each objective.

A shard sample is what ``tasks/shards.py`` writes: ``<key>.json`` (the record: question, answer,
modality, task, meta; in ``meta``, preference samples carry ``chosen`` and ``rejected`` and LongCoT
samples a ``replay_weight``), the media as encoded bytes (``<key>.png``/``.jpg`` or the video file ``<key>.mp4``)
and, for a video, its Slow-Fast plan (``<key>.plan.json``). Videos are written once to a cache folder
because ffmpeg reads files.
"""

from __future__ import annotations

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


def judge_prompt(task: str, question: str, first: str, second: str, think: bool = False) -> str:
    """The pairwise judging prompt; ``no_think``: answer "A" or "B"; ``think``: assess, then answer."""
    mode = "Assess both responses, then answer A or B. /think" if think else "Answer A or B. /no_think"
    return (
        f"Task: {task}\nQuery: {question}\nResponse A: {first}\nResponse B: {second}\n"
        f"Which response is better? Consider {', '.join(REWARD_MODEL_DIMENSIONS)}. {mode}"
    )


def judge_assessment(meta: dict[str, Any], better: str) -> str:
    """The reasoning a ``think`` judgment is trained on, from what curation recorded about the pair.

    Our choice (the report trains it by SFT then RL): a per-dimension assessment built from the pair's
    recorded scores and reason, e.g. for a ``correct-vs-wrong`` pair: correctness favours the chosen
    response because its answer matches the reference and the other's does not.
    """
    worse = "B" if better == "A" else "A"
    reason = meta.get("reason", "preference")
    why = {
        "correct-vs-wrong": f"Response {better}'s answer is correct and Response {worse}'s is not",
        "reference-vs-wrong": f"Response {better} gives the reference answer and Response {worse} does not",
        "score-gap": f"both answers agree, but Response {better}'s reasoning scored higher",
    }.get(reason, f"Response {better} was preferred")
    scores = ""
    if "chosen_score" in meta and "rejected_score" in meta:
        scores = (
            f" Quality: Response {better} {float(meta['chosen_score']):.1f}, "
            f"Response {worse} {float(meta['rejected_score']):.1f} of 5."
        )
    return (
        f"Correctness: {why}. Credibility and relevance follow correctness here; redundancy and clarity "
        f"do not change the outcome.{scores}"
    )


def judge_conversations(example: Example) -> list[Conversation]:
    """Pairwise judge training data: both orders (against position bias) in both modes.

    ``no_think``: the answer is the letter of the better (chosen) response. ``think``: a reasoning block
    assessing the two along the judging dimensions, then the letter.
    """
    question = example.record.get("question", "")
    try:
        chosen, rejected = example.meta["chosen"], example.meta["rejected"]
    except KeyError as exc:
        raise ValueError(f"sample {example.sample_id} is not a preference pair (no {exc})") from exc
    media = [p for p in example.user_parts if p["type"] != "text"]
    task = example.record.get("task", "vqa")
    out = []
    for think in (False, True):
        for a, b, verdict in ((chosen, rejected, "A"), (rejected, chosen, "B")):
            answer: dict[str, Any] = {"role": "assistant", "content": verdict}
            if think:
                answer["reasoning_content"] = judge_assessment(example.meta, verdict)
            text = judge_prompt(task, question, a, b, think=think)
            out.append([{"role": "user", "content": [*media, {"type": "text", "text": text}]}, answer])
    return out


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
