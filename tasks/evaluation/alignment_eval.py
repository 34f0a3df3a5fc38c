"""Instruction compliance on held-out alignment prompts: how often greedy answers meet their constraints.

The prompts are built exactly as the alignment stage's (``tasks/alignment_prompts.py``: 1-3 format or
constraint instructions and a ``/think`` or ``/no_think`` switch each) but from data no training mix
holds: easy-vqa TEST questions (curation reads only the train split) and questions about documented
standard-library functions of ``HELD_OUT_MODULES``, none of which the text-instructions source reads.

Metrics (``evaluate_alignment``):
- ``alignment/compliance``: satisfied constraints / all constraints, over every prompt;
- ``alignment/all_constraints``: share of prompts whose answer meets every one of its constraints;
- ``alignment/compliance_ci95_low`` / ``_high``: Wilson interval of ``all_constraints`` over the prompts;
- ``alignment/compliance/<kind>``: per constraint kind, the share of its checks that passed;
- ``alignment/prompts``: how many prompts were answered.
Example: two prompts, [max_words ok, lowercase failed] and [json ok]: compliance 2/3, all_constraints 1/2.
"""

from __future__ import annotations

import importlib
import inspect
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from data_specs.schemas import Record
from keye_model.rewards import Constraint
from tasks.alignment_prompts import alignment_records, constraints_of
from tasks.evaluation.answering import EvalModel, answer_all, as_eval_model
from tasks.evaluation.metrics import wilson_interval
from tasks.posttrain_data import user_turn
from tasks.sources import text_instructions

#: Standard-library modules whose functions make the held-out text prompts (disjoint from
#: ``text_instructions.MODULES``; a test checks it).
HELD_OUT_MODULES = ("copy", "html", "keyword", "operator", "secrets", "stat", "unicodedata", "uuid")
#: Offset added to the seed so held-out prompts never draw the instructions of a curation run's seed.
HELD_OUT_SEED_OFFSET = 7_000_001


def held_out_functions() -> list[str]:
    """Qualified names of the documented public functions of ``HELD_OUT_MODULES``, sorted."""
    names = []
    for module_name in HELD_OUT_MODULES:
        module = importlib.import_module(module_name)
        for attr in sorted(dir(module)):
            obj = getattr(module, attr)
            if not attr.startswith("_") and callable(obj) and not inspect.isclass(obj) and inspect.getdoc(obj):
                names.append(f"{module_name}.{attr}")
    return sorted(set(names))


def held_out_records(num_prompts: int, seed: int) -> list[Record]:
    """``num_prompts`` held-out questions picked by ``seed``: about half easy-vqa test questions (with their
    image and answer), the rest text questions about ``held_out_functions`` (free-form)."""
    import easy_vqa

    rng = random.Random(seed)
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    functions = held_out_functions()
    num_text = min(num_prompts // 2, len(functions))
    num_image = min(num_prompts - num_text, len(questions))
    records = [
        Record(
            id=f"easy-vqa-test-{i}",
            source="easy-vqa",
            modality="image",
            task="counting" if questions[i].startswith("how many") else "vqa",
            question=questions[i],
            answer=answers[i],
            media_path=paths[image_ids[i]],
            meta={"split": "test"},
        )
        for i in sorted(rng.sample(range(len(questions)), num_image))
    ]
    for name in sorted(rng.sample(functions, num_text)):
        records.append(
            Record(
                id=f"held-out-text-{name.replace('.', '-').replace('_', '-').lower()}",
                source="held-out-text",
                modality="text",
                task="instruction",
                question=rng.choice(text_instructions.PROMPTS).format(name=name),
                answer=f"the documentation of {name}",
                meta={"function": name},
            )
        )
    return records


def held_out_alignment_prompts(num_prompts: int, seed: int = 0) -> list[Record]:
    """The held-out records as alignment prompts (instructions, switch and constraints in ``meta``)."""
    if num_prompts < 1:
        raise ValueError(f"held-out alignment prompts: num_prompts must be >= 1, got {num_prompts}")
    return alignment_records(held_out_records(num_prompts, seed), HELD_OUT_SEED_OFFSET + seed)


def compliance(answers: Sequence[str], constraints: Sequence[Sequence[Constraint]]) -> dict[str, float]:
    """The metrics of the module docstring for answers (think block removed) and each one's constraints."""
    if len(answers) != len(constraints) or not answers:
        raise ValueError(f"compliance: {len(answers)} answers for {len(constraints)} constraint sets")
    passed_by_kind: dict[str, list[float]] = defaultdict(list)
    met = total = all_met = 0.0
    for answer, checks in zip(answers, constraints):
        if not checks:
            raise ValueError(f"compliance: answer {answer[:40]!r} has no constraint to check")
        scores = [c.check(answer).score for c in checks]
        for check, score in zip(checks, scores):
            passed_by_kind[check.kind].append(score)
        met += sum(scores)
        total += len(scores)
        all_met += float(all(s == 1.0 for s in scores))
    share = all_met / len(answers)
    low, high = wilson_interval(share, len(answers))
    metrics = {
        "alignment/compliance": met / total,
        "alignment/all_constraints": share,
        "alignment/compliance_ci95_low": low,
        "alignment/compliance_ci95_high": high,
        "alignment/prompts": float(len(answers)),
    }
    for kind, scores in sorted(passed_by_kind.items()):
        metrics[f"alignment/compliance/{kind}"] = sum(scores) / len(scores)
    return metrics


def evaluate_alignment(
    evaluator: EvalModel | str | Path,
    num_prompts: int,
    *,
    seed: int = 0,
    max_new_tokens: int = 64,
    tokenizer_dir: str | None = None,
) -> dict[str, float]:
    """Greedy answers to ``num_prompts`` held-out alignment prompts, scored by ``compliance``.

    ``evaluator`` is a loaded ``EvalModel`` or a checkpoint directory. A ``/think`` answer is scored on
    the text after its think block; one cut off inside the block has an empty answer and fails.
    """
    model = as_eval_model(evaluator, tokenizer_dir=tokenizer_dir)
    prompts = held_out_alignment_prompts(num_prompts, seed)
    answers = answer_all(model, [user_turn(p) for p in prompts], [p.id for p in prompts], max_new_tokens=max_new_tokens)
    return compliance(answers, [constraints_of(p) for p in prompts])
