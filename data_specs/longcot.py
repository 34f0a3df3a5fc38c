"""What the LongCoT cold-start data is (SPEC.md section 4): problems, reasoning paths, assessed samples,
review decisions, preference pairs, the configs of the five steps, and the scoring rubrics.

Declarative and stdlib-only: the computations live in ``tasks/longcot.py``, ``tasks/review.py`` and
``tasks/preference.py``. Every record round-trips through one JSON line (``to_json`` / ``from_json``)
so that each step reads and writes plain JSONL files.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ---- rubrics ------------------------------------------------------------------------------------
#: Step 3, level 2: each dimension is scored 1-5 by the judge.
JUDGE_RUBRIC: dict[str, str] = {
    "logical_consistency": "each step follows from the previous ones; no contradiction, no leap "
    "(5 = airtight, 3 = a gap, 1 = incoherent)",
    "factual_accuracy": "statements about the image and about the world are true, computations are "
    "right (5 = all correct, 3 = a minor slip, 1 = mostly wrong)",
    "relevance": "the reasoning addresses the question that was asked and uses what it needs from "
    "the image (5 = fully on task, 3 = padded or drifting, 1 = off topic)",
}
JUDGE_DIMENSIONS: tuple[str, ...] = tuple(JUDGE_RUBRIC)

#: What the pairwise reward model (Keye-Reward) weighs in ``think`` mode: SPEC.md's nine dimensions (four
#: from the report). Not the LongCoT judge's step-level rubric above.
REWARD_MODEL_DIMENSIONS = (
    "credibility",
    "correctness",
    "redundancy",
    "relevance",
    "completeness",
    "clarity",
    "instruction following",
    "visual grounding",
    "safety",
)

#: Step 5: the dynamic quality score.
QUALITY_SCORE_RUBRIC: dict[int, str] = {
    1: "answerable without the image (text-only paths get it right) or ambiguous (no reference and the paths disagree)",
    2: "none of the three strengths below",
    3: "one strength: confirmed image dependence (text-only paths fail), multi-step reasoning, or a "
    "confident consensus (paths agree and the judge rates it highly)",
    4: "two of the three strengths",
    5: "all three: strongly multimodal, advanced and confidently right reasoning",
}

REVIEW_ACTIONS = ("approve", "edit", "reject")
#: Ids become WebDataset keys and GX-checked ids (data_specs.schemas.ID_PATTERN): at most 128 characters.
MAX_ID_CHARS = 128


def fit_id(text: str) -> str:
    """``text`` when short enough, else its first 115 characters + ``-`` + 12 hex of its sha256 (unique)."""
    import hashlib

    if len(text) <= MAX_ID_CHARS:
        return text
    return f"{text[: MAX_ID_CHARS - 13]}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


class QualityTier(enum.StrEnum):
    """Step 3 outcome: A answer and reasoning right, B right answer but flawed reasoning, C discarded.

    Ordered: ``"A" < "B" < "C"`` as strings, which sorting by quality relies on."""

    A = "A"
    B = "B"
    C = "C"


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} for {cls.__name__}")
    return cls(**data)


def write_jsonl(items: Any, path: str | Path) -> Path:
    """One ``to_json()`` line per item (creating the parent directory); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="ascii") as f:
        for item in items:
            f.write(item.to_json() + "\n")
    return path


def read_jsonl(path: str | Path, cls: type) -> list[Any]:
    """The items of a ``write_jsonl`` file; a bad line raises naming the file and line number."""
    out = []
    for number, line in enumerate(Path(path).read_text(encoding="ascii").splitlines(), start=1):
        if line.strip():
            try:
                out.append(cls.from_json(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a {cls.__name__}: {exc}") from exc
    return out


class _JsonLine:
    """Mixin: one dataclass <-> one JSON line."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, ensure_ascii=True)

    @classmethod
    def from_json(cls, text: str) -> Any:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        return _from_dict(cls, dict(data), where=str(data.get("id", data.get("sample_id", "?"))))


# ---- step 1 -------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class CoTProblem(_JsonLine):
    """A reasoning-worthy question selected (and possibly made harder) in step 1."""

    id: str
    """The record id, plus ``-<rule>`` when the question was rewritten."""
    record_id: str
    """Id of the raw ``Record`` it came from."""
    source: str
    """Source adapter of the record; preference pairs are balanced across it."""
    task: str
    """Task type of the record (``counting``, ``vqa``, ...)."""
    category: str
    """Reasoning category: math, stem, ocr, grounding, counting or vqa."""
    question: str
    """The question the generator sees (after enhancement)."""
    reference: str | None
    """The reference final answer (after enhancement); None when the source has none."""
    media_path: str | None = None
    """Image or video the question is about; None for text problems."""
    enhancement: str | None = None
    """Name of the rewrite rule applied in step 1, None for the original question."""
    original_question: str = ""
    """The question before enhancement."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Extras carried from the record (and the original answer when the rule changed it)."""

    def __post_init__(self) -> None:
        if not self.question.strip():
            raise ValueError(f"problem {self.id}: empty question")


# ---- step 2 -------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class CoTPath(_JsonLine):
    """One sampled reasoning chain for a problem, with its confidence."""

    id: str
    """``<problem id>-p<k>``."""
    problem_id: str
    """The problem it answers."""
    text: str
    """The full response: ``<think>...</think>`` then the answer."""
    thinking: str | None
    """The text between the think tags; None when the response is malformed."""
    answer: str | None
    """The final answer after ``</think>``; None when the response is malformed or has none."""
    finish_reason: str
    """``stop`` or ``length`` (truncated)."""
    num_tokens: int
    """Generated tokens."""
    mean_logprob: float | None
    """Whole-response confidence: mean token log-probability; None when the backend gave none."""
    step_min_logprob: float | None
    """Step-wise confidence: the lowest per-step mean log-probability (steps split at newlines)."""
    agreement: float
    """Fraction of the problem's paths whose final answer is equivalent to this one (incl. itself)."""
    generator: str = ""
    """Which backend and model produced it."""


# ---- step 3 -------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class RuleReport:
    """Level-1 (rule) assessment of a path."""

    well_formed: bool
    """``<think>...</think>`` followed by a non-empty answer."""
    answer_correct: bool | None
    """Final answer equivalent to the reference; None when there is no reference."""
    length_ok: bool
    """Thinking length within the configured limits and not truncated."""
    repetitive: bool
    """Repeated n-grams or lines above the configured threshold."""
    num_steps: int
    """Non-empty reasoning steps (lines, or sentences in a one-line chain)."""
    reasons: tuple[str, ...] = ()
    """Human-readable failures, empty when every rule passed."""


@dataclass(frozen=True, kw_only=True)
class JudgeVerdict:
    """Level-2 (judge) assessment of a path along ``JUDGE_RUBRIC``."""

    judge: str
    """Which judge produced it (``rule-judge``, ``llm-judge:<model>``)."""
    scores: dict[str, int] | None
    """1-5 per rubric dimension; None when the judge output could not be parsed."""
    rationale: str = ""
    """The judge's short justification (or why the scores are None)."""

    @property
    def mean(self) -> float | None:
        return None if self.scores is None else sum(self.scores.values()) / len(self.scores)

    @property
    def min(self) -> int | None:
        return None if self.scores is None else min(self.scores.values())


@dataclass(frozen=True, kw_only=True)
class CoTSample(_JsonLine):
    """A problem with one of its paths and everything steps 3-5 decided about it."""

    id: str
    """Same as the path id."""
    problem: CoTProblem
    """The question side."""
    path: CoTPath
    """The response side."""
    rules: RuleReport
    """Level-1 assessment."""
    verdict: JudgeVerdict
    """Level-2 assessment."""
    tier: QualityTier
    """A, B or C."""
    reasons: tuple[str, ...] = ()
    """Why the tier (rule failures, judge scores, review notes)."""
    borderline: bool = False
    """Sent to human review: every B and the A samples near the threshold."""
    review: str | None = None
    """``approve`` / ``edit`` / ``reject`` once reviewed, None before."""
    quality_score: int | None = None
    """Step 5 score 1-5 (``QUALITY_SCORE_RUBRIC``), None before scoring."""
    replay_weight: float = 1.0
    """Expected repeats per epoch in training (4-5 above 1, low scores below 1)."""
    features: dict[str, Any] = field(default_factory=dict)
    """The computable features the quality score came from."""
    score_history: list[dict[str, Any]] = field(default_factory=list)
    """Every (re)scoring: ``{"score", "weight", "why"}``, oldest first."""

    @property
    def response(self) -> str:
        return self.path.text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CoTSample:
        data = dict(data)
        where = f"sample {data.get('id', '?')}"
        data["problem"] = _from_dict(CoTProblem, data["problem"], where)
        data["path"] = _from_dict(CoTPath, data["path"], where)
        rules = dict(data["rules"])
        rules["reasons"] = tuple(rules.get("reasons", ()))
        data["rules"] = _from_dict(RuleReport, rules, where)
        data["verdict"] = _from_dict(JudgeVerdict, data["verdict"], where)
        data["tier"] = QualityTier(data["tier"])
        data["reasons"] = tuple(data.get("reasons", ()))
        return _from_dict(cls, data, where)


@dataclass(frozen=True, kw_only=True)
class TrainingFeedback:
    """What training learnt about one sample, fed back into its quality score."""

    loss: float | None = None
    """Mean per-token loss of the sample in the last SFT epoch."""
    rl_pass_rate: float | None = None
    """Fraction of RL rollouts on its prompt that were correct."""


# ---- step 4 -------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ReviewDecision(_JsonLine):
    """What a reviewer (a person or the auto policy) decided about one sample; lineage records these."""

    sample_id: str
    """The reviewed sample."""
    decision: str
    """``approve``, ``edit`` or ``reject``."""
    reviewer: str
    """A person's name, ``auto`` for the policy, ``auto-timeout`` when nobody answered in time."""
    edited_response: str | None = None
    """The corrected full response for ``edit``; None otherwise."""
    comment: str = ""
    """Free-text note (the policy states its rule here)."""

    def __post_init__(self) -> None:
        if self.decision not in REVIEW_ACTIONS:
            raise ValueError(f"review of {self.sample_id}: decision {self.decision!r} not in {REVIEW_ACTIONS}")
        if self.decision == "edit" and not (self.edited_response or "").strip():
            raise ValueError(f"review of {self.sample_id}: 'edit' needs a non-empty edited_response")


@dataclass(frozen=True, kw_only=True)
class ReviewPolicy:
    """The stated rule of ``mode="auto"`` review (unattended tiny runs)."""

    approve_a: bool = True
    """Approve borderline A samples."""
    min_agreement_b: float = 0.6
    """Approve a B sample only when at least this fraction of its problem's paths agree with it."""
    min_judge_mean_b: float = 3.0
    """... and its judge mean is at least this (unparsed judge output counts as failing)."""


# ---- MPO pairs ----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class PreferencePair(_JsonLine):
    """One MPO preference pair: same prompt, a better and a worse response."""

    id: str
    """``<problem id>-<chosen path>-<rejected path>`` suffixes, unique."""
    problem_id: str
    """The shared prompt's problem."""
    source: str
    """Source of the problem (pairs are balanced across sources)."""
    prompt: str
    """The question."""
    media_path: str | None
    """The image or video of the prompt."""
    chosen: str
    """The preferred full response."""
    rejected: str
    """The dispreferred full response."""
    chosen_score: float
    """Ranking score of the chosen path (higher is better)."""
    rejected_score: float
    """Ranking score of the rejected path."""
    reason: str
    """``correct-vs-wrong``, ``score-gap`` or ``reference-vs-wrong`` (the reference answer as chosen); the reward
    model's sets add ``answer-vs-distractor``, ``padded-right`` and ``padded-wrong`` (``tasks/preference.py``)."""

    def __post_init__(self) -> None:
        if not self.chosen.strip() or not self.rejected.strip():
            raise ValueError(f"pair {self.id}: chosen and rejected must be non-empty")
        if self.chosen == self.rejected:
            raise ValueError(f"pair {self.id}: chosen and rejected are identical")


@dataclass(frozen=True, kw_only=True)
class PreferenceConfig:
    """How MPO pairs are built from assessed paths."""

    max_pairs_per_prompt: int = 4
    """Cap per problem, so easy prompts with many paths do not dominate."""
    max_reference_pairs_per_prompt: int = 1
    """Cap on a problem's ``reference-vs-wrong`` pairs (its reference over its most plausible wrong paths).
    They complement the model's own pairs for problems it gets wrong on every path; at 4 a problem, a weak
    seed's 35 all-wrong problems of 96 made 170 of its 324 pairs, so MPO learned mostly from the
    reference's no-think form rather than from the model's contrasts."""
    min_score_gap: float = 1.0
    """Between two correct (or two unreferenced) paths, the ranking-score gap needed for a pair."""
    source_balance_ratio: float = 2.0
    """No source keeps more than this times the pairs of the smallest (non-empty) source."""

    def __post_init__(self) -> None:
        if min(self.max_pairs_per_prompt, self.max_reference_pairs_per_prompt) < 1:
            raise ValueError(
                "PreferenceConfig: max_pairs_per_prompt and max_reference_pairs_per_prompt must be >= 1, got "
                f"{self.max_pairs_per_prompt}, {self.max_reference_pairs_per_prompt}"
            )
        if self.source_balance_ratio < 1:
            raise ValueError(f"PreferenceConfig: source_balance_ratio must be >= 1, got {self.source_balance_ratio}")


# ---- the five steps -----------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class LongCoTConfig:
    """Dials of the five LongCoT steps; ``tiny`` is the default."""

    reasoning_tasks: tuple[str, ...] = ("reasoning", "counting", "ocr", "grounding", "vqa")
    """Record tasks worth a reasoning chain (captions and plain instructions are not)."""
    enhance: bool = True
    """Rewrite questions into harder variants (step 1)."""
    max_problems: int | None = None
    """Most problems step 1 keeps, picked by ``seed`` from all it could make (None: all of them)."""
    num_paths: int = 4
    """K: paths per problem (step 2)."""
    max_new_tokens: int = 256
    """Generation budget per path."""
    temperature: float = 0.8
    """Sampling temperature; paths must differ."""
    seed: int = 0
    """Sampling and rewrite-rule seed."""
    min_think_chars: int = 10
    """Shorter thinking is not a chain of thought."""
    max_think_chars: int = 8000
    """Longer thinking is rambling at this scale."""
    max_repeated_ngram_fraction: float = 0.3
    """Fraction of repeated word 4-grams above which a path is repetitive."""
    min_agreement_without_reference: float = 0.5
    """With no reference, a path counts as right only when this fraction of paths agree with it."""
    max_kept_paths_per_problem: int = 2
    """Step 3: diverse correct paths kept per problem, most confident first; the rest go to the rejects."""
    duplicate_similarity: float = 0.9
    """Step 3: thinking this similar (difflib ratio) to a better kept path is a duplicate."""
    tier_a_min_judge: int = 4
    """Tier A needs every judge dimension at least this; right answers below it are B."""
    tier_c_max_judge: int = 2
    """Any judge dimension at or below this means badly flawed: C even with a right answer."""
    borderline_margin: float = 0.5
    """An A sample whose judge mean is below ``tier_a_min_judge + margin`` is borderline."""
    borderline_agreement: float = 0.5
    """An A sample whose paths agree less than this is borderline."""
    blind_accuracy_max: float = 0.25
    """Step 5: image dependence is confirmed when text-only paths are right at most this often."""
    blind_answerable_min: float = 0.5
    """Step 5: text-only paths right at least this often make the sample answerable without the image."""
    ambiguous_agreement: float = 0.75
    """Step 5: with no reference, paths agreeing less than this make the sample ambiguous."""
    confident_agreement: float = 0.75
    """Step 5: the confident-consensus strength needs at least this path agreement (and judge >= A)."""
    min_reasoning_steps: int = 3
    """Step 5: this many steps count as multi-step reasoning."""
    replay_weights: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 3.0)
    """Replay weight of quality scores 1..5: 4-5 repeated, low scores used sparingly."""
    mastered_pass_rate: float = 0.95
    """Training feedback: an RL pass rate at or above this means the sample is mastered (score - 1)."""
    hard_loss_ratio: float = 1.5
    """Training feedback: a loss above this times the median of learnable samples raises the score."""

    def __post_init__(self) -> None:
        if self.num_paths < 1:
            raise ValueError(f"LongCoTConfig: num_paths must be >= 1, got {self.num_paths}")
        if len(self.replay_weights) != 5:
            raise ValueError(f"LongCoTConfig: replay_weights needs 5 values, got {self.replay_weights}")
        if not 1 <= self.tier_c_max_judge < self.tier_a_min_judge <= 5:
            raise ValueError(
                f"LongCoTConfig: need 1 <= tier_c_max_judge ({self.tier_c_max_judge}) < "
                f"tier_a_min_judge ({self.tier_a_min_judge}) <= 5"
            )
