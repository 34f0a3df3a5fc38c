"""Between general-RL rounds (SPEC.md section 4, iteration with rejection sampling), as pipeline tasks.

Round 1 is the preset's cold-start stage, then GSPO as stage ``gspo-r1``. Each later round r (up to
``RLSpec.num_iterations`` = N): the last round's RL model answers every cold-start problem once and the
reward model (a trained pairwise judge) decides which answers replace the references
(``rejection_sample_task``; an answer the answer matcher judges wrong never replaces one); the
cold-start stage trains again on the updated set as ``coldstart-r<r>``; that model keeps the RL prompts
it solves sometimes but not always
(``tasks.posttrain_steps.filter_rl_prompts_task``); and GSPO runs again from it, as ``gspo-r<r>``, and
in the last round under its own name ``gspo``: the stage folder every later reader of that name (the
alignment stage, evaluation, a later run) resolves, so they all get the last round's model. Each
round's counts go to the log and to lineage (``record_round_task``); ``flows/posttrain.py`` drives it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from prefect import task

from data_specs.longcot import read_jsonl, write_jsonl
from data_specs.schemas import Record
from data_specs.stages import JUDGE_OBJECTIVES, RLSpec, StageSpec
from keye_model.answers import join_thinking
from tasks.lineage import LineageStore, Metric
from tasks.posttrain_data import user_turn

log = logging.getLogger(__name__)

#: Lineage metric names of a round, recorded under the GSPO stage's own name at step = the round.
ROUND_METRICS = (
    "rounds/resampled",
    "rounds/wrong",
    "rounds/replaced",
    "rounds/prompts",
    "rounds/prompts_kept",
)


def round_name(name: str, round_index: int) -> str:
    """The stage folder and lineage name of stage ``name`` trained in round ``round_index``: ``gspo-r1``."""
    return f"{name}-r{round_index}"


def round_stage(spec: StageSpec, name: str, inputs: tuple[str, ...]) -> StageSpec:
    """Stage ``spec`` trained again as ``name`` (its own stage folder) from the checkpoints ``inputs``."""
    return dataclasses.replace(spec, name=name, inputs=inputs)


def reward_stage_of(spec: StageSpec, stages: tuple[StageSpec, ...]) -> StageSpec:
    """The stage whose checkpoint judges rejection sampling for GSPO stage ``spec``: its ``reward_model``,
    else the latest earlier stage that trains the pairwise judge (an objective of ``JUDGE_OBJECTIVES``)."""
    earlier = stages[: [s.name for s in stages].index(spec.name)]
    if spec.reward_model:
        return next(s for s in earlier if s.name == spec.reward_model)
    judges = [s for s in earlier if s.objective in JUDGE_OBJECTIVES]
    if not judges:
        raise ValueError(
            f"stage {spec.name}: {spec.rl.num_iterations} RL rounds need a reward model to judge rejection "
            f"sampling, and no earlier stage trains one (objectives {JUDGE_OBJECTIVES}); set StageSpec.reward_model"
        )
    return judges[-1]


def _answer_text(message: dict[str, Any]) -> str:
    """An assistant message back in the record's answer form: the think block, then the answer."""
    return join_thinking(message.get("reasoning_content"), str(message["content"]))


@task(name="rejection-sample", task_run_name="rejection-sample-r{round_index}")
def rejection_sample_task(
    rl_checkpoint: str,
    judge_checkpoint: str,
    records_path: str,
    out_path: str,
    round_index: int,
    max_new_tokens: int = 48,
    seed: int = 0,
) -> tuple[str, dict[str, int]]:
    """The cold-start records with the RL model's answer wherever the judge prefers it to the reference
    (``keye_model.training.rl_iteration.rejection_sample``, both orders averaged) and, for a record whose
    problem has a checkable answer (``meta["reference"]``, as LongCoT records carry it), the answer
    matcher judges the RL answer right.

    Returns (the updated records' file, counts): ``resampled`` records, ``wrong`` RL answers (not
    judged), ``replaced`` answers. Video records are kept as they are (not resampled). A replaced record
    keeps its id and weight; ``meta`` says the round and the judge's preference.
    """
    from keye_model.model import KeyeForConditionalGeneration
    from keye_model.processor import KeyeProcessor, ProcessorConfig
    from keye_model.tokenizer import load_tokenizer
    from keye_model.training.judge import PairwiseJudge
    from keye_model.training.rl_iteration import ColdStartSample, rejection_sample

    records = read_jsonl(records_path, Record)
    resampled = [r for r in records if r.modality != "video"]
    model = KeyeForConditionalGeneration.from_pretrained(rl_checkpoint).eval()
    processor = KeyeProcessor(load_tokenizer(rl_checkpoint), ProcessorConfig.load(rl_checkpoint))
    judge = PairwiseJudge(KeyeForConditionalGeneration.from_pretrained(judge_checkpoint), processor)
    result = rejection_sample(
        model,
        processor,
        [
            ColdStartSample(
                id=r.id,
                conversation=[*user_turn(r), {"role": "assistant", "content": r.answer}],
                reference=r.meta.get("reference"),
            )
            for r in resampled
        ],
        judge,
        spec=RLSpec(max_new_tokens=max_new_tokens),
        seed=seed + 1000 * round_index,
    )
    replaced = set(result.replaced)
    answers = {s.id: _answer_text(s.conversation[-1]) for s in result.samples if s.id in replaced}
    out = [
        dataclasses.replace(
            r,
            answer=answers[r.id],
            meta={**r.meta, "replaced_in_round": round_index, "judge_preference": result.preference[r.id]},
        )
        if r.id in replaced
        else r
        for r in records
    ]
    counts = {"resampled": len(resampled), "wrong": len(result.wrong), "replaced": len(replaced)}
    log.info(
        "round %d: the RL model's answer replaced %d of %d cold-start answers (%d were wrong; judge %s)",
        round_index,
        len(replaced),
        len(resampled),
        len(result.wrong),
        judge_checkpoint,
    )
    return str(write_jsonl(out, out_path)), counts


def count_lines(path: str | None) -> int:
    """Records in a JSONL file (0 when there is none)."""
    if not path or not Path(path).exists():
        return 0
    return sum(1 for line in Path(path).read_text().splitlines() if line.strip())


@task(name="record-round", task_run_name="record-round-{stage}", retries=2, retry_delay_seconds=5)
def record_round_task(lineage_db: str, run_id: str, stage: str, round_index: int, counts: dict[str, int]) -> None:
    """A round's counts (``ROUND_METRICS``, by name without the ``rounds/`` prefix) as lineage metrics of
    the GSPO stage ``stage`` at step ``round_index``, and one log line."""
    unknown = {f"rounds/{k}" for k in counts} - set(ROUND_METRICS)
    if unknown:
        raise ValueError(f"stage {stage} round {round_index}: unknown round counts {sorted(unknown)}")
    log.info("RL round %d (%s): %s", round_index, stage, ", ".join(f"{k} {v}" for k, v in counts.items()))
    with LineageStore(lineage_db) as store:
        store.record_metrics(
            [
                Metric(run_id=run_id, stage=stage, step=round_index, name=f"rounds/{k}", value=float(v))
                for k, v in counts.items()
            ]
        )


def hint_table(stage_dir: str) -> dict[str, float]:
    """The GSPO stage's hint table (``gspo/all_wrong_*``, ``gspo/groups``) from its last metrics line;
    {} when the stage logged none."""
    path = Path(stage_dir) / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    last = json.loads(lines[-1]) if lines else {}
    return {k: float(v) for k, v in last.items() if k.startswith("gspo/")}
