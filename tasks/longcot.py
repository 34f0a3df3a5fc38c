"""LongCoT cold-start data, steps 1-3 and 5 (SPEC.md section 4); step 4, human review, is review.py.

1. ``collect_problems``: pick reasoning-worthy records and rewrite them into harder variants.
2. ``generate_paths``: K paths per problem, each with a confidence (whole-response mean token
   log-probability, and step-wise: the lowest per-step mean) and the agreement of its final answer.
3. ``assess_quality``: level-1 rules (format, answer match, length, repetition) + level-2 judge rubric
   -> tier A / B / C; C goes to a rejects file with its reasons. Borderline samples are flagged.
5. ``score_samples``: quality score 1-5 from computable features, and a replay weight;
   ``update_scores`` folds training feedback back in. The scored samples then pass the ``cot`` GX suite
   (``validated_samples``): one that fails it (tier C, an unreviewed tier B, a reviewer's reject, blank or
   oversized text) is quarantined with its reasons instead of reaching the cold-start mix.

Each step is a plain function over small dataclasses; the ``*_task`` entry points read and write JSONL
paths (one record per line) and are cached by the content of those files, not their names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from prefect import task

from data_specs.expectations import cot_row
from data_specs.longcot import (
    CoTPath,
    CoTProblem,
    CoTSample,
    JudgeVerdict,
    LongCoTConfig,
    QualityTier,
    RuleReport,
    TrainingFeedback,
    fit_id,
    read_jsonl,
    write_jsonl,
)
from data_specs.schemas import Record
from keye_model.answers import answers_match, normalize_answer, parse_number
from keye_model.reference_judge import API_KEY_ENV_ENV, MODEL_ENV, URL_ENV
from keye_model.special_tokens import THINK_END, THINK_START
from tasks.answers import (  # noqa: F401  (split_response re-exported: review reads edited responses with it)
    path_confidence,
    reasoning_steps,
    repeated_ngram_fraction,
    split_response,
)
from tasks.caching import FILE_TASK_OPTIONS
from tasks.generation import (
    Generation,
    GenerationRequest,
    Generator,
    GeneratorConfig,
    Judge,
    LLMJudge,
    RuleJudge,
    build_generator,
)
from tasks.validate import quarantine_beside, quarantine_failures

log = logging.getLogger(__name__)

# ---- step 1: collection and enhancement -----------------------------------------------------------
_CATEGORIES = {"counting": "counting", "ocr": "ocr", "grounding": "grounding", "vqa": "vqa"}


def _justify(question: str, answer: str) -> tuple[str, str] | None:
    return f"{question} Justify your answer step by step from what you see in the image.", answer


def _locate_first(question: str, answer: str) -> tuple[str, str] | None:
    return f"First locate the relevant object or text in the image, then answer: {question}", answer


def _compare_count(question: str, answer: str) -> tuple[str, str] | None:
    """A counting twist: ask whether the count exceeds a threshold next to it (answer computed)."""
    values = parse_number(answer)
    if values is None or len(values) != 1:
        return None
    (value,) = values
    if value != int(value):
        return None
    threshold = int(value) - 1 if int(value) % 2 else int(value)
    return (
        f"{question} Is that number greater than {threshold}? Answer yes or no.",
        "yes" if value > threshold else "no",
    )


#: Rewrite rules per category; each returns (question, reference) or None when it does not apply.
ENHANCEMENTS = {
    "justify": _justify,
    "locate_first": _locate_first,
    "compare_count": _compare_count,
}
_RULES_FOR = {
    "counting": ("compare_count", "justify"),
    "ocr": ("locate_first", "justify"),
    "grounding": ("locate_first",),
    "vqa": ("justify", "locate_first"),
    "math": ("justify",),
    "stem": ("justify",),
}


def _category(record: Record) -> str:
    domain = str(record.meta.get("domain", "")).lower()
    if domain in ("math", "stem"):
        return domain
    if record.task == "reasoning":
        return "math" if parse_number(record.answer) is not None else "stem"
    return _CATEGORIES.get(record.task, record.task)


def collect_problems(records: Sequence[Record], config: LongCoTConfig) -> list[CoTProblem]:
    """Step 1: reasoning-worthy records (task in ``config.reasoning_tasks``, with a question and an
    answer) as problems, deduplicated by (question, media), each rewritten by one rule when
    ``config.enhance`` (the rule is picked by a hash of seed and record id, so reruns agree)."""
    problems, seen = [], set()
    for record in records:
        if record.task not in config.reasoning_tasks or not record.question.strip() or not record.answer.strip():
            continue
        if THINK_START in record.answer:  # already a reasoning chain: SFT data, not a problem to solve
            continue
        key = (normalize_answer(record.question), record.media_path)
        if key in seen:
            continue
        seen.add(key)
        category = _category(record)
        question, reference, rule = record.question, record.answer, None
        if config.enhance:
            rules = _RULES_FOR.get(category, ("justify",))
            digest = int(hashlib.sha256(f"{config.seed}:{record.id}".encode()).hexdigest(), 16)
            for offset in range(len(rules)):
                name = rules[(digest + offset) % len(rules)]
                rewritten = ENHANCEMENTS[name](record.question, record.answer)
                if rewritten:
                    (question, reference), rule = rewritten, name
                    break
        meta = dict(record.meta, original_answer=record.answer) if rule else dict(record.meta)
        problems.append(
            CoTProblem(
                id=fit_id(f"{record.id}-{rule.replace('_', '-')}") if rule else record.id,
                record_id=record.id,
                source=record.source,
                task=record.task,
                category=category,
                question=question,
                reference=reference,
                media_path=record.media_path,
                enhancement=rule,
                original_question=record.question,
                meta=meta,
            )
        )
    log.info("collected %d problems from %d records", len(problems), len(records))
    if config.max_problems is not None and len(problems) > config.max_problems:
        keep = set(random.Random(config.seed).sample(range(len(problems)), config.max_problems))
        problems = [p for i, p in enumerate(problems) if i in keep]
    return problems


# ---- step 2: multi-path generation ------------------------------------------------------------------
COT_INSTRUCTION = (
    f"Think step by step inside {THINK_START} {THINK_END}, one step per line, then give only the final answer."
)


def cot_request(problem: CoTProblem, *, with_image: bool = True) -> GenerationRequest:
    return GenerationRequest(
        prompt=f"{problem.question}\n{COT_INSTRUCTION}", image_path=problem.media_path if with_image else None
    )


def answer_agreement(answers: Sequence[str | None]) -> list[float]:
    """For each answer, the fraction of all answers equivalent to it (malformed answers agree with none)."""
    n = len(answers)
    return [0.0 if a is None else sum(b is not None and answers_match(b, a) for b in answers) / n for a in answers]


def generate_paths(
    problems: Sequence[CoTProblem], generator: Generator, config: LongCoTConfig, *, num_paths: int | None = None
) -> list[CoTPath]:
    """Step 2: ``num_paths`` (default ``config.num_paths``) paths per problem with their confidences."""
    k = num_paths or config.num_paths
    outputs = generator.generate(
        [cot_request(p) for p in problems],
        k,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        seed=config.seed,
    )
    paths = []
    for problem, generations in zip(problems, outputs, strict=True):
        assert len(generations) == k, f"problem {problem.id}: generator returned {len(generations)} paths, not {k}"
        paths.extend(paths_from_generations(problem, generations, generator.name))
    return paths


def paths_from_generations(
    problem: CoTProblem, generations: Sequence[Generation], generator_name: str = ""
) -> list[CoTPath]:
    """One problem's generations as paths: split, confidence, and agreement among these generations."""
    split = [split_response(g.text) for g in generations]
    agreement = answer_agreement([answer for _, answer in split])
    paths = []
    for i, (gen, (thinking, answer), agree) in enumerate(zip(generations, split, agreement)):
        whole, step_wise = path_confidence(gen)
        paths.append(
            CoTPath(
                id=fit_id(f"{problem.id}-p{i}"),
                problem_id=problem.id,
                text=gen.text,
                thinking=thinking,
                answer=answer,
                finish_reason=gen.finish_reason,
                num_tokens=len(gen.token_logprobs),
                mean_logprob=whole,
                step_min_logprob=step_wise,
                agreement=agree,
                generator=generator_name,
            )
        )
    return paths


# ---- step 3: two-level quality assessment ---------------------------------------------------------------
def check_rules(problem: CoTProblem, path: CoTPath, config: LongCoTConfig) -> RuleReport:
    """Level 1."""
    reasons = []
    well_formed = path.thinking is not None and path.answer is not None
    if not well_formed:
        reasons.append(f"not '{THINK_START}...{THINK_END}' followed by an answer")
    correct = None
    if problem.reference is not None:
        correct = well_formed and answers_match(path.answer, problem.reference)
        if not correct:
            reasons.append(f"answer {path.answer!r} does not match reference {problem.reference!r}")
    think_chars = len(path.thinking or "")
    length_ok = path.finish_reason != "length" and config.min_think_chars <= think_chars <= config.max_think_chars
    if not length_ok:
        reasons.append(
            f"thinking length {think_chars} chars (finish {path.finish_reason}) outside "
            f"[{config.min_think_chars}, {config.max_think_chars}]"
        )
    repetition = repeated_ngram_fraction(path.text)
    repetitive = repetition > config.max_repeated_ngram_fraction
    if repetitive:
        reasons.append(f"repetitive: {repetition:.2f} of 4-grams repeat")
    steps = len(reasoning_steps(path.thinking)) if path.thinking else 0
    return RuleReport(
        well_formed=well_formed,
        answer_correct=correct,
        length_ok=length_ok,
        repetitive=repetitive,
        num_steps=steps,
        reasons=tuple(reasons),
    )


def assess_quality(
    problems: Sequence[CoTProblem], paths: Sequence[CoTPath], judge: Judge, config: LongCoTConfig
) -> tuple[list[CoTSample], list[CoTSample]]:
    """Step 3: ``(kept A/B samples, rejected C samples)``, each with its reasons; A near the threshold
    and every B are flagged ``borderline`` for step 4. The judge sees only paths that passed level 1."""
    by_id = {p.id: p for p in problems}
    missing = sorted({p.problem_id for p in paths} - set(by_id))
    if missing:
        raise ValueError(f"paths refer to unknown problems: {missing[:5]}")
    reports = [check_rules(by_id[p.problem_id], p, config) for p in paths]
    passed = [i for i, (path, r) in enumerate(zip(paths, reports)) if _passes_level1(path, r, config)]
    judged = judge.judge([(by_id[paths[i].problem_id], paths[i], reports[i]) for i in passed])
    assert len(judged) == len(passed), f"judge {judge.name} returned {len(judged)} verdicts for {len(passed)} paths"
    verdicts = dict(zip(passed, judged))
    kept, rejected = [], []
    for i, (path, report) in enumerate(zip(paths, reports)):
        verdict = verdicts.get(i)
        if verdict is None:
            verdict = JudgeVerdict(judge=judge.name, scores=None, rationale="not judged: failed level 1")
        tier, reasons = _tier(path, report, verdict, config)
        borderline = tier is QualityTier.B or (
            tier is QualityTier.A
            and (
                verdict.mean < config.tier_a_min_judge + config.borderline_margin
                or path.agreement < config.borderline_agreement
            )
        )
        sample = CoTSample(
            id=path.id,
            problem=by_id[path.problem_id],
            path=path,
            rules=report,
            verdict=verdict,
            tier=tier,
            reasons=tuple(reasons),
            borderline=borderline,
        )
        (rejected if tier is QualityTier.C else kept).append(sample)
    kept, surplus = keep_diverse_confident(kept, config)
    log.info("assessed %d paths: %d kept, %d rejected, %d surplus", len(paths), len(kept), len(rejected), len(surplus))
    return kept, rejected + surplus


def keep_diverse_confident(
    samples: Sequence[CoTSample], config: LongCoTConfig
) -> tuple[list[CoTSample], list[CoTSample]]:
    """Per problem, best first (A before B, then step-wise confidence): drop a path whose thinking is a
    near-duplicate (difflib ratio >= ``duplicate_similarity``) of a better one, and keep at most
    ``max_kept_paths_per_problem``. Returns ``(kept, surplus)``; surplus samples keep their tier."""
    import difflib

    def rank(s: CoTSample):
        confidence = s.path.step_min_logprob if s.path.step_min_logprob is not None else float("-inf")
        return (s.tier.value, -confidence, s.id)

    kept, surplus = [], []
    by_problem: dict[str, list[CoTSample]] = {}
    for s in samples:
        by_problem.setdefault(s.problem.id, []).append(s)
    for group in by_problem.values():
        chosen: list[CoTSample] = []
        for s in sorted(group, key=rank):
            twin = next(
                (
                    c
                    for c in chosen
                    if difflib.SequenceMatcher(
                        None, (c.path.thinking or "").lower(), (s.path.thinking or "").lower()
                    ).ratio()
                    >= config.duplicate_similarity
                ),
                None,
            )
            if twin is not None:
                surplus.append(dataclasses.replace(s, reasons=(*s.reasons, f"near-duplicate of {twin.id}")))
            elif len(chosen) >= config.max_kept_paths_per_problem:
                surplus.append(
                    dataclasses.replace(s, reasons=(*s.reasons, "surplus: less confident than the kept paths"))
                )
            else:
                chosen.append(s)
        kept.extend(chosen)
    return kept, surplus


def _passes_level1(path: CoTPath, report: RuleReport, config: LongCoTConfig) -> bool:
    right = (
        report.answer_correct
        if report.answer_correct is not None
        else (path.agreement >= config.min_agreement_without_reference)
    )
    return report.well_formed and right and report.length_ok and not report.repetitive


def _tier(path: CoTPath, report: RuleReport, verdict, config: LongCoTConfig) -> tuple[QualityTier, list[str]]:
    reasons = list(report.reasons)
    if report.answer_correct is None and path.agreement < config.min_agreement_without_reference:
        reasons.append(f"no reference and only {path.agreement:.2f} of paths agree")
    if not _passes_level1(path, report, config):
        return QualityTier.C, reasons
    if verdict.scores is None:
        return QualityTier.B, reasons + [f"judge gave no scores ({verdict.rationale}); needs a person"]
    scores = ", ".join(f"{k}={v}" for k, v in verdict.scores.items())
    if verdict.min <= config.tier_c_max_judge:
        return QualityTier.C, reasons + [f"badly flawed reasoning: {scores}"]
    if verdict.min < config.tier_a_min_judge:
        return QualityTier.B, reasons + [f"right answer, flawed reasoning: {scores}"]
    return QualityTier.A, reasons + [f"right answer, sound reasoning: {scores}"]


# ---- step 5: dynamic quality score ----------------------------------------------------------------------
def probe_image_dependence(
    problems: Sequence[CoTProblem], blind_generator: Generator, config: LongCoTConfig, *, num_paths: int = 4
) -> dict[str, float]:
    """Text-only accuracy per problem: the image is withheld and the reference compared (problems without
    a reference or media are skipped). High accuracy means the image is not needed."""
    probed = [p for p in problems if p.reference is not None and p.media_path is not None]
    outputs = blind_generator.generate(
        [cot_request(p, with_image=False) for p in probed],
        num_paths,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        seed=config.seed,
    )
    accuracy = {}
    for problem, generations in zip(probed, outputs):
        answers = [split_response(g.text)[1] for g in generations]
        accuracy[problem.id] = sum(a is not None and answers_match(a, problem.reference) for a in answers) / len(
            answers
        )
    return accuracy


def quality_features(sample: CoTSample, config: LongCoTConfig, blind_accuracy: float | None) -> dict:
    image_dependent = None if blind_accuracy is None else blind_accuracy <= config.blind_accuracy_max
    if sample.problem.media_path is None:
        image_dependent = False
    return {
        "blind_accuracy": blind_accuracy,
        "answerable_without_image": blind_accuracy is not None and blind_accuracy >= config.blind_answerable_min,
        "ambiguous": sample.problem.reference is None and sample.path.agreement < config.ambiguous_agreement,
        "image_dependent": image_dependent,
        "multi_step": sample.rules.num_steps >= config.min_reasoning_steps,
        "confident": sample.path.agreement >= config.confident_agreement
        and (sample.verdict.min or 0) >= config.tier_a_min_judge,
        "num_steps": sample.rules.num_steps,
        "agreement": sample.path.agreement,
        "judge_mean": sample.verdict.mean,
    }


def score_samples(
    samples: Sequence[CoTSample], config: LongCoTConfig, blind_accuracy: Mapping[str, float] | None = None
) -> list[CoTSample]:
    """Step 5: quality score (``QUALITY_SCORE_RUBRIC``) = 1 when answerable without the image or
    ambiguous, else 2 + the number of strengths (confirmed image dependence, multi-step, confident);
    replay weight from ``config.replay_weights``."""
    blind_accuracy = blind_accuracy or {}
    out = []
    for s in samples:
        f = quality_features(s, config, blind_accuracy.get(s.problem.id))
        if f["answerable_without_image"] or f["ambiguous"]:
            score, why = 1, "answerable without the image" if f["answerable_without_image"] else "ambiguous"
        else:
            strengths = [k for k in ("image_dependent", "multi_step", "confident") if f[k]]
            score, why = 2 + len(strengths), "strengths: " + (", ".join(strengths) or "none")
        out.append(_rescored(dataclasses.replace(s, features=f), score, why, config))
    return out


def _rescored(sample: CoTSample, score: int, why: str, config: LongCoTConfig) -> CoTSample:
    score = max(1, min(5, score))
    weight = config.replay_weights[score - 1]
    history = [*sample.score_history, {"score": score, "weight": weight, "why": why}]
    return dataclasses.replace(sample, quality_score=score, replay_weight=weight, score_history=history)


def update_scores(
    samples: Sequence[CoTSample], feedback: Mapping[str, TrainingFeedback], config: LongCoTConfig
) -> list[CoTSample]:
    """Training feedback: mastered samples (RL pass rate >= ``mastered_pass_rate``) lose a point; hard but
    learnable ones (loss above ``hard_loss_ratio`` x the median loss, pass rate not 0) gain one; an RL pass
    rate of 0 flags the sample ``needs_review`` (too hard, or a wrong reference) without changing it."""
    losses = [f.loss for f in feedback.values() if f.loss is not None]
    median = statistics.median(losses) if losses else None
    out = []
    for s in samples:
        fb = feedback.get(s.id)
        if fb is None:
            out.append(s)
            continue
        if s.quality_score is None:
            raise ValueError(f"sample {s.id}: update_scores before score_samples")
        delta, why = 0, []
        if fb.rl_pass_rate is not None and fb.rl_pass_rate >= config.mastered_pass_rate:
            delta, why = -1, [f"mastered (pass rate {fb.rl_pass_rate:.2f})"]
        elif fb.loss is not None and median and fb.loss > config.hard_loss_ratio * median and fb.rl_pass_rate != 0:
            delta, why = 1, [f"hard but learnable (loss {fb.loss:.3g} vs median {median:.3g})"]
        features = dict(s.features)
        if fb.rl_pass_rate == 0:
            features["needs_review"] = True
            why.append("RL pass rate 0: needs review")
        updated = dataclasses.replace(s, features=features)
        out.append(_rescored(updated, s.quality_score + delta, "; ".join(why) or "feedback: unchanged", config))
    return out


def validated_samples(samples: Sequence[CoTSample], quarantine_path: str | Path) -> list[CoTSample]:
    """The samples that pass the ``cot`` suite (one GX run for the batch); the others are appended to
    ``quarantine_path`` with their reasons."""
    return quarantine_failures("cot", samples, [cot_row(s) for s in samples], quarantine_path=quarantine_path).passed


# ---- Prefect entry points: JSONL paths in, JSONL paths out ------------------------------------------------
_TASK_OPTIONS = FILE_TASK_OPTIONS


@task(name="collect-problems", **_TASK_OPTIONS)
def collect_problems_task(records_path: str, out_path: str, config: LongCoTConfig) -> str:
    records = [Record.from_json(line) for line in Path(records_path).read_text().splitlines() if line.strip()]
    return str(write_jsonl(collect_problems(records, config), out_path))


@task(name="generate-paths", **_TASK_OPTIONS)
def generate_paths_task(problems_path: str, out_path: str, generator: GeneratorConfig, config: LongCoTConfig) -> str:
    problems = read_jsonl(problems_path, CoTProblem)
    return str(write_jsonl(generate_paths(problems, build_generator(generator), config), out_path))


def judge_config_from_env() -> GeneratorConfig | None:
    """The OpenAI-compatible judge server the environment names (the same variables as the RL stages'
    reference judge, ``keye_model.reference_judge``), or None."""
    url = os.environ.get(URL_ENV)
    if not url:
        return None
    return GeneratorConfig(
        kind="openai", base_url=url, model=os.environ.get(MODEL_ENV, ""), api_key_env=os.environ.get(API_KEY_ENV_ENV)
    )


@task(name="assess-quality", **_TASK_OPTIONS)
def assess_quality_task(
    problems_path: str,
    paths_path: str,
    out_path: str,
    out_rejects_path: str,
    config: LongCoTConfig,
    judge: GeneratorConfig | None = None,
) -> tuple[str, str]:
    """``judge=None``: the model judge the environment configures (``judge_config_from_env``), else the
    deterministic RuleJudge, which is not a model and says so in the log; a given ``judge``: an LLMJudge over it."""
    judge = judge or judge_config_from_env()
    if judge is None:
        log.warning(
            "LongCoT level-2 judge: the RULE judge (no model judge is configured; set %s and %s to an "
            "OpenAI-compatible server to have a model judge the reasoning)",
            URL_ENV,
            MODEL_ENV,
        )
    chosen_judge = RuleJudge() if judge is None else LLMJudge(build_generator(judge))
    kept, rejected = assess_quality(
        read_jsonl(problems_path, CoTProblem), read_jsonl(paths_path, CoTPath), chosen_judge, config
    )
    return str(write_jsonl(kept, out_path)), str(write_jsonl(rejected, out_rejects_path))


@task(name="score-samples", **_TASK_OPTIONS)
def score_samples_task(
    samples_path: str, out_path: str, config: LongCoTConfig, blind_generator: GeneratorConfig | None = None
) -> str:
    """``blind_generator``: a text-only model for the image-dependence probe; None skips the probe.

    Writes the scored samples that pass the ``cot`` suite to ``out_path`` and the others to
    ``quarantine_beside(out_path)`` (rewritten each run)."""
    samples = read_jsonl(samples_path, CoTSample)
    blind = None
    if blind_generator is not None:
        problems = list({s.problem.id: s.problem for s in samples}.values())
        blind = probe_image_dependence(problems, build_generator(blind_generator), config)
    quarantine = quarantine_beside(out_path)
    quarantine.unlink(missing_ok=True)
    return str(write_jsonl(validated_samples(score_samples(samples, config, blind), quarantine), out_path))
