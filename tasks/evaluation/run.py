"""Evaluate a checkpoint: easy-vqa answers, temporal localization, Video-MME, the vision probe, and (from
their own modules) held-out caption loss, instruction compliance and pairwise judging.

Each ``evaluate_*`` takes a checkpoint directory (or an already loaded ``EvalModel``, so
``evaluate_checkpoint`` loads once) and returns a flat ``{metric name: value}`` dict; names are
``<benchmark>/<metric>`` (``vqa/accuracy``, ``temporal/mean_iou``, ``videomme/duration/short``,
``probe/accuracy``). ``EvalConfig`` picks which run and how big; Prefect entry points are at the bottom.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prefect import task

from tasks.evaluation.alignment_eval import evaluate_alignment
from tasks.evaluation.answering import EvalModel, answer_all, as_eval_model
from tasks.evaluation.captions import evaluate_captions
from tasks.evaluation.metrics import parse_span, temporal_scores, vqa_accuracy, wilson_interval
from tasks.evaluation.probes import probe_set_named, random_init_vision, run_probe, vit_features
from tasks.evaluation.reward_eval import evaluate_reward_pairs
from tasks.evaluation.videomme import load_videomme, score_videomme, videomme_prompt

log = logging.getLogger(__name__)

Checkpoint = str | Path | EvalModel


def _user_turn(media: dict, text: str) -> list[dict]:
    return [{"role": "user", "content": [media, {"type": "text", "text": text}]}]


# ---- easy-vqa ------------------------------------------------------------------------------------


def evaluate_vqa(
    checkpoint: Checkpoint,
    num_samples: int,
    *,
    seed: int = 0,
    max_new_tokens: int = 8,
    tokenizer_dir: str | None = None,
) -> dict[str, float]:
    """Greedy answers to ``num_samples`` easy-vqa test questions (picked by ``seed``), scored by ``vqa_accuracy``.

    Returns ``vqa/accuracy``, ``vqa/num_samples`` and, per question kind, ``vqa/accuracy/yes_no`` and
    ``vqa/accuracy/open`` (shape or colour words).
    """
    import easy_vqa

    evaluator = as_eval_model(checkpoint, tokenizer_dir=tokenizer_dir)
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    picked = sorted(random.Random(seed).sample(range(len(questions)), min(num_samples, len(questions))))
    conversations = [_user_turn({"type": "image", "image": paths[image_ids[i]]}, questions[i]) for i in picked]
    responses = answer_all(
        evaluator, conversations, [f"easy-vqa-test-{i}" for i in picked], max_new_tokens=max_new_tokens
    )
    references = [answers[i] for i in picked]
    accuracy = vqa_accuracy(responses, references)
    low, high = wilson_interval(accuracy, len(picked))
    baseline = majority_by_question_type()
    majority = [baseline.get(question_type(questions[i]), "") for i in picked]
    metrics = {
        "vqa/accuracy": accuracy,
        "vqa/num_samples": float(len(picked)),
        "vqa/ci95_low": low,
        "vqa/ci95_high": high,
        "vqa/majority_baseline": vqa_accuracy(majority, references),
    }
    for kind, is_kind in (("yes_no", True), ("open", False)):
        chosen = [(r, a) for r, a in zip(responses, references) if (a in ("yes", "no")) == is_kind]
        if chosen:
            metrics[f"vqa/accuracy/{kind}"] = vqa_accuracy([r for r, _ in chosen], [a for _, a in chosen])
    return metrics


def question_type(question: str) -> str:
    """An easy-vqa question with its shape and colour words blanked: its template.

    Example: "is there a red circle?" -> "is there a _ _?"; "what color is the triangle?" -> "what color is
    the _?".
    """
    words = _content_words()
    return re.sub(r"[a-z]+", lambda m: "_" if m.group(0) in words else m.group(0), question.lower())


@functools.cache
def _content_words() -> frozenset[str]:
    import easy_vqa

    return frozenset(easy_vqa.get_answers()) - {"yes", "no"}


@functools.cache
def majority_by_question_type() -> dict[str, str]:
    """The most frequent TRAIN-split answer of each question template: the baseline a model must beat to
    show it looks at the image (it reads only the question)."""
    import easy_vqa

    questions, answers, _ = easy_vqa.get_train_questions()
    counts: dict[str, Counter] = {}
    for question, answer in zip(questions, answers):
        counts.setdefault(question_type(question), Counter())[answer] += 1
    return {kind: counter.most_common(1)[0][0] for kind, counter in counts.items()}


# ---- temporal localization -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TemporalSample:
    """A video, a question about when something happens, and when it does."""

    sample_id: str
    """Names the sample in errors and logs."""
    video_path: str
    """The video file."""
    query: str
    """The question put to the model ("When is a red square visible in the video?")."""
    start_s: float
    """True start of the event, seconds from the start of the video."""
    end_s: float
    """True end of the event, seconds."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.start_s <= self.end_s:
            raise ValueError(
                f"temporal sample {self.sample_id}: need 0 <= start_s <= end_s, got {self.start_s}, {self.end_s}"
            )


def load_temporal_samples(path: str | Path) -> list[TemporalSample]:
    """JSON Lines of TemporalSample fields, or of curated records (``id``, ``media_path``, ``question``,
    ``answer``) whose answer names a span ("From 2.5 to 3.0 seconds."); other records are skipped."""
    samples, skipped = [], 0
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "start_s" in row:
            samples.append(
                TemporalSample(
                    sample_id=str(row.get("sample_id", f"{path}:{number}")),
                    video_path=row["video_path"],
                    query=row["query"],
                    start_s=float(row["start_s"]),
                    end_s=float(row["end_s"]),
                )
            )
            continue
        span = parse_span(str(row.get("answer", "")))
        if span is None or not row.get("media_path"):
            skipped += 1
            continue
        samples.append(
            TemporalSample(
                sample_id=str(row.get("id", f"{path}:{number}")),
                video_path=row["media_path"],
                query=row["question"],
                start_s=span[0],
                end_s=span[1],
            )
        )
    log.info("temporal samples: %d from %s (%d records without a span skipped)", len(samples), path, skipped)
    return samples


def evaluate_temporal(
    checkpoint: Checkpoint,
    videos_with_events: Sequence[TemporalSample],
    *,
    max_new_tokens: int = 24,
    tokenizer_dir: str | None = None,
    video_preset: str = "default",
) -> dict[str, float]:
    """Ask each sample's query about its video; parse the span answered; ``temporal/...`` scores."""
    evaluator = as_eval_model(checkpoint, tokenizer_dir=tokenizer_dir, video_preset=video_preset)
    for sample in videos_with_events:
        if not Path(sample.video_path).is_file():
            raise FileNotFoundError(f"temporal sample {sample.sample_id}: video {sample.video_path} does not exist")
    conversations = [_user_turn({"type": "video", "video": s.video_path}, s.query) for s in videos_with_events]
    responses = answer_all(
        evaluator, conversations, [s.sample_id for s in videos_with_events], max_new_tokens=max_new_tokens
    )
    scores = temporal_scores([parse_span(r) for r in responses], [(s.start_s, s.end_s) for s in videos_with_events])
    return scores.as_metrics()


# ---- Video-MME -----------------------------------------------------------------------------------


def evaluate_videomme(
    checkpoint: Checkpoint,
    json_path: str | Path,
    video_dir: str | Path,
    *,
    limit: int | None = None,
    max_new_tokens: int = 8,
    tokenizer_dir: str | None = None,
    video_preset: str = "default",
) -> dict[str, float]:
    """Video-MME accuracy overall and per duration and task type (``videomme/...``)."""
    items = load_videomme(json_path, video_dir, limit=limit)
    evaluator = as_eval_model(checkpoint, tokenizer_dir=tokenizer_dir, video_preset=video_preset)
    conversations = [_user_turn({"type": "video", "video": item.video_path}, videomme_prompt(item)) for item in items]
    responses = answer_all(
        evaluator, conversations, [f"videomme-{item.question_id}" for item in items], max_new_tokens=max_new_tokens
    )
    return score_videomme(items, responses)


# ---- vision probe --------------------------------------------------------------------------------


def evaluate_probe(
    checkpoint: Checkpoint,
    probe_set: str = "photos",
    *,
    num_shots: int = 4,
    num_test: int = 4,
    seed: int = 0,
    tokenizer_dir: str | None = None,
) -> dict[str, float]:
    """Nearest-prototype accuracy of the checkpoint's ViT on ``probe_set`` (``probe/accuracy``, ``probe/chance``),
    and of a randomly initialized ViT of the same shape on the same images (``probe/random_init_accuracy``):
    only the difference says what training taught the ViT."""
    evaluator = as_eval_model(checkpoint, tokenizer_dir=tokenizer_dir)
    labelled = probe_set_named(probe_set, num_shots, num_test, seed)
    metrics = run_probe(vit_features(evaluator.model, evaluator.processor), labelled).as_metrics()
    random_vit = random_init_vision(evaluator.model, seed)
    baseline = run_probe(vit_features(random_vit, evaluator.processor), labelled).as_metrics()
    return {**metrics, "probe/random_init_accuracy": baseline["probe/accuracy"]}


# ---- everything configured -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Which evaluations ``evaluate_checkpoint`` runs and how large; a zero / None switches one off."""

    vqa_samples: int = 32
    """easy-vqa test questions to answer (0: skip)."""
    temporal_jsonl: str | None = None
    """JSON Lines of temporal samples or curated scene-video records (None: skip)."""
    videomme_json: str | None = None
    """A Video-MME question file (None: skip)."""
    videomme_video_dir: str | None = None
    """Folder of the Video-MME videos; needed with videomme_json."""
    videomme_limit: int | None = None
    """Answer only the first this many Video-MME questions (None: all)."""
    probe_set: str | None = "photos"
    """Vision probe set: photos, easy-vqa-shape or easy-vqa-color (None: skip)."""
    probe_shots: int = 4
    """Shot images per class for the probe prototypes."""
    probe_test: int = 4
    """Held-out images per class for the probe."""
    caption_images: int = 0
    """Held-out easy-vqa test images whose caption loss is measured (0: skip)."""
    alignment_prompts: int = 0
    """Held-out alignment prompts whose instructions the answers must follow (0: skip)."""
    reward_pairs: int = 0
    """Held-out answer pairs to judge, for a checkpoint that is a pairwise reward model (0: skip)."""
    max_new_tokens: int = 16
    """Generation cap for every generative evaluation."""
    video_preset: str = "default"
    """Slow-Fast preset for planning videos ("tiny" for CPU tests)."""
    tokenizer_dir: str | None = None
    """Tokenizer directory when the checkpoint has none beside it."""
    seed: int = 0
    """Picks the easy-vqa questions and the probe views."""

    def __post_init__(self) -> None:
        sizes = {k: getattr(self, k) for k in ("vqa_samples", "caption_images", "alignment_prompts", "reward_pairs")}
        if min(sizes.values()) < 0:
            raise ValueError(f"EvalConfig: sizes must be >= 0, got {sizes}")
        if (self.videomme_json is None) != (self.videomme_video_dir is None):
            raise ValueError(
                "EvalConfig: videomme_json and videomme_video_dir go together "
                f"(got {self.videomme_json!r}, {self.videomme_video_dir!r})"
            )
        if self.max_new_tokens < 1:
            raise ValueError(f"EvalConfig: max_new_tokens must be >= 1, got {self.max_new_tokens}")


def evaluate_checkpoint(checkpoint_dir: str | Path, config: EvalConfig = EvalConfig()) -> dict[str, float]:
    """Load the checkpoint once and run every evaluation ``config`` switches on; one flat metrics dict."""
    evaluator = EvalModel.load(checkpoint_dir, tokenizer_dir=config.tokenizer_dir, video_preset=config.video_preset)
    metrics: dict[str, float] = {}
    if config.vqa_samples:
        metrics |= evaluate_vqa(evaluator, config.vqa_samples, seed=config.seed, max_new_tokens=config.max_new_tokens)
    if config.temporal_jsonl:
        metrics |= evaluate_temporal(
            evaluator, load_temporal_samples(config.temporal_jsonl), max_new_tokens=config.max_new_tokens
        )
    if config.videomme_json:
        metrics |= evaluate_videomme(
            evaluator,
            config.videomme_json,
            config.videomme_video_dir,
            limit=config.videomme_limit,
            max_new_tokens=config.max_new_tokens,
        )
    if config.probe_set:
        metrics |= evaluate_probe(
            evaluator, config.probe_set, num_shots=config.probe_shots, num_test=config.probe_test, seed=config.seed
        )
    if config.caption_images:
        metrics |= evaluate_captions(evaluator, config.caption_images, seed=config.seed)
    if config.alignment_prompts:
        metrics |= evaluate_alignment(
            evaluator, config.alignment_prompts, seed=config.seed, max_new_tokens=config.max_new_tokens
        )
    if config.reward_pairs:
        metrics |= evaluate_reward_pairs(evaluator, config.reward_pairs, seed=config.seed)
    log.info("evaluated %s: %s", checkpoint_dir, ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())))
    return metrics


# ---- Prefect entry points ------------------------------------------------------------------------


@task(name="evaluate-checkpoint")
def evaluate_checkpoint_task(checkpoint_dir: str, config: EvalConfig = EvalConfig()) -> dict[str, float]:
    return evaluate_checkpoint(checkpoint_dir, config)
