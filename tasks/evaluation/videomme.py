"""Video-MME: load its public question file, find the local videos, prompt, and score per duration/task.

The file is the benchmark's public JSON in either of its two shapes, or JSON Lines of the flat one:
- flat (the Hugging Face export), one object per question: ``video_id`` ("001"), ``videoID`` (the
  YouTube id the video file is named by, optional), ``duration`` (short / medium / long), ``domain``,
  ``sub_category``, ``task_type``, ``question_id`` ("001-1"), ``question``, ``options``
  (["A. ...", "B. ...", "C. ...", "D. ..."]), ``answer`` ("A");
- nested (the GitHub release): one object per video with those video fields and ``questions``, a list
  of objects with the question fields.
Video files are looked up in ``video_dir`` as ``<videoID or video_id>.<mp4|mkv|webm|mov|avi>``.

Scores (``score_videomme``): overall accuracy plus accuracy per duration and per task type, as
``videomme/accuracy``, ``videomme/duration/short``, ``videomme/task_type/Counting Problem`` ...
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data_specs.schemas import VIDEO_SUFFIXES
from keye_model.answers import LETTERS, extract_choice
from tasks.evaluation.metrics import multiple_choice_accuracy

log = logging.getLogger(__name__)

DURATIONS = ("short", "medium", "long")
#: The benchmark's own instruction (from its evaluation recipe); the model answers with one letter.
PROMPT_HEAD = (
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter ({letters}) of the correct option."
)
PROMPT_TAIL = "The best answer is:"
_VIDEO_FIELDS = ("video_id", "duration", "domain", "sub_category")
_QUESTION_FIELDS = ("question_id", "task_type", "question", "options", "answer")


@dataclass(frozen=True, kw_only=True)
class VideoMMEItem:
    """One Video-MME question with the local video it is about."""

    question_id: str
    """Benchmark question id ("001-1")."""
    video_id: str
    """Benchmark video id ("001")."""
    video_path: str
    """The local video file."""
    duration: str
    """short, medium or long."""
    domain: str
    """Top-level domain ("Knowledge", "Sports Competition" ...)."""
    sub_category: str
    """Finer category ("Humanity & History" ...)."""
    task_type: str
    """What the question tests ("Counting Problem", "Temporal Reasoning" ...)."""
    question: str
    """The question text."""
    options: tuple[str, ...]
    """The options as the benchmark writes them: "A. ...", "B. ..."."""
    answer: str
    """The correct letter."""


def find_video(video_dir: str | Path, names: Sequence[str], question_id: str) -> Path:
    """The first existing ``video_dir/<name><ext>``; FileNotFoundError naming the question and the paths tried."""
    tried = [Path(video_dir) / f"{name}{ext}" for name in names if name for ext in sorted(VIDEO_SUFFIXES)]
    for path in tried:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"Video-MME question {question_id}: no video file for {list(filter(None, names))} "
        f"in {video_dir} (tried {', '.join(p.name for p in tried)})"
    )


def _rows(path: Path) -> list[dict]:
    """Flat question dicts from a flat or nested JSON file or a JSON Lines file."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of Video-MME questions or videos, got {type(data).__name__}")
    rows = []
    for entry in data:
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entries must be JSON objects, got {entry!r:.100}")
        if "questions" in entry:
            video = {k: v for k, v in entry.items() if k != "questions"}
            rows += [{**video, **question} for question in entry["questions"]]
        else:
            rows.append(entry)
    return rows


def load_videomme(json_path: str | Path, video_dir: str | Path, *, limit: int | None = None) -> list[VideoMMEItem]:
    """Questions of a Video-MME file whose videos are found in ``video_dir`` (the first ``limit``).

    ValueError naming the question when a field is missing or malformed; FileNotFoundError naming the
    question and the file names tried when its video is missing.
    """
    path = Path(json_path)
    if not path.is_file():
        raise FileNotFoundError(f"Video-MME question file {path} does not exist")
    items = []
    for number, row in enumerate(_rows(path)):
        if limit is not None and len(items) >= limit:
            break
        question_id = str(row.get("question_id", f"#{number}"))
        missing = [k for k in _VIDEO_FIELDS + _QUESTION_FIELDS if k not in row]
        if missing:
            raise ValueError(f"{path}: Video-MME question {question_id} lacks field(s) {missing}")
        options = tuple(str(o) for o in row["options"])
        letters = LETTERS[: len(options)]
        answer = str(row["answer"]).strip().upper()
        if not options or [o.strip()[:1].upper() for o in options] != list(letters):
            raise ValueError(
                f"{path}: Video-MME question {question_id}: options must start A., B., ... in "
                f"order, got {list(options)}"
            )
        if answer not in letters:
            raise ValueError(
                f"{path}: Video-MME question {question_id}: answer {row['answer']!r} is not one of {list(letters)}"
            )
        if row["duration"] not in DURATIONS:
            raise ValueError(
                f"{path}: Video-MME question {question_id}: duration {row['duration']!r} not in {DURATIONS}"
            )
        video_id = str(row["video_id"])
        video = find_video(video_dir, [str(row.get("videoID") or ""), video_id], question_id)
        items.append(
            VideoMMEItem(
                question_id=question_id,
                video_id=video_id,
                video_path=str(video),
                duration=row["duration"],
                domain=str(row["domain"]),
                sub_category=str(row["sub_category"]),
                task_type=str(row["task_type"]),
                question=str(row["question"]),
                options=options,
                answer=answer,
            )
        )
    log.info("Video-MME: %d questions from %s", len(items), path)
    return items


def videomme_prompt(item: VideoMMEItem) -> str:
    """The text that follows the video in the user turn.

    Example (4 options): "Select the best answer ... Respond with only the letter (A, B, C, or D) of the
    correct option.\\nHow many ...?\\nA. 1\\nB. 2\\nC. 3\\nD. 4\\nThe best answer is:".
    """
    letters = list(LETTERS[: len(item.options)])
    spoken = ", ".join(letters[:-1]) + f", or {letters[-1]}" if len(letters) > 1 else letters[0]
    return "\n".join([PROMPT_HEAD.format(letters=spoken), item.question, *item.options, PROMPT_TAIL])


def score_videomme(items: Sequence[VideoMMEItem], responses: Sequence[str]) -> dict[str, float]:
    """Accuracy overall, per duration and per task type, from the model's raw responses (in item order).

    Keys: ``videomme/accuracy``, ``videomme/num_questions``, ``videomme/num_unparsed`` (responses with no
    letter, scored wrong), ``videomme/duration/<d>`` for the durations present, ``videomme/task_type/<t>``.
    """
    if len(items) != len(responses):
        raise ValueError(f"{len(responses)} responses for {len(items)} Video-MME questions")
    letters = [extract_choice(r, len(item.options), item.options) for item, r in zip(items, responses)]
    scores = {
        "videomme/accuracy": multiple_choice_accuracy(letters, [item.answer for item in items]),
        "videomme/num_questions": float(len(items)),
        "videomme/num_unparsed": float(sum(letter is None for letter in letters)),
    }
    for key in ("duration", "task_type"):
        groups: dict[str, list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            groups[getattr(item, key)].append(index)
        for name in sorted(groups, key=lambda g: (DURATIONS.index(g) if g in DURATIONS else len(DURATIONS), g)):
            picked = groups[name]
            scores[f"videomme/{key}/{name}"] = multiple_choice_accuracy(
                [letters[i] for i in picked], [items[i].answer for i in picked]
            )
    return scores
