"""Steps of the post-training chain that sit between training stages: reviewing the LongCoT samples,
filtering RL prompts by the current model's pass rate, and the lineage of data the chain generates.

The review itself (``tasks.review.request_review``) pauses the flow and so runs in the flow body; the
tasks here load its input and apply and record its output.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from prefect import task

from data_specs.longcot import CoTSample, ReviewDecision, read_jsonl, write_jsonl
from data_specs.schemas import Record
from tasks.layout import read_mix_shards
from tasks.lineage import Artifact, Edge, LineageStore, Metric, Review
from tasks.posttrain_data import user_turn
from tasks.review import apply_decisions

log = logging.getLogger(__name__)


@task(name="load-cot-samples")
def load_samples_task(path: str) -> list[CoTSample]:
    return read_jsonl(path, CoTSample) if Path(path).exists() else []


@task(name="apply-review")
def apply_review_task(
    samples: list[CoTSample], decisions: list[ReviewDecision], kept_path: str, rejected_path: str
) -> tuple[str, str]:
    """Approve / edit / reject as decided; kept and reviewer-rejected samples to their JSONL files."""
    kept, rejected = apply_decisions(samples, decisions)
    return str(write_jsonl(kept, kept_path)), str(write_jsonl(rejected, rejected_path))


@task(name="record-reviews", retries=2, retry_delay_seconds=5)
def record_reviews_task(lineage_db: str, run_id: str, decisions: list[ReviewDecision]) -> int:
    """Each decision with who made it (a person's name, or ``auto``)."""
    rows = [
        Review(
            run_id=run_id,
            reviewer=d.reviewer,
            decision=d.decision,
            sample_ids=(d.sample_id,),
            note=d.comment or (d.edited_response or ""),
        )
        for d in decisions
    ]
    with LineageStore(lineage_db) as store:
        store.record_reviews(rows)
    return len(rows)


def dataset_artifact(path: str, run_id: str, kind: str = "dataset") -> Artifact:
    data = Path(path).read_bytes()
    return Artifact(
        kind=kind,
        uri=str(Path(path).resolve()),
        sha256=hashlib.sha256(data).hexdigest(),
        num_bytes=len(data),
        num_records=data.count(b"\n"),
        created_by_run=run_id,
    )


@task(name="record-generated-lineage", retries=2, retry_delay_seconds=5)
def record_generated_lineage_task(
    lineage_db: str,
    run_id: str,
    parents: list[str],
    dataset_path: str,
    shards_dir: str | None = None,
    mix: str | None = None,
) -> dict[str, list[str]]:
    """A generated dataset made from ``parents`` (checkpoint / dataset ids), and the shards made from it.

    Returns the dataset's id and the shards' ids, for the edges of the stage that trains on them.
    """
    dataset = dataset_artifact(dataset_path, run_id)
    artifacts = [dataset]
    edges = [Edge(parent_id=p, child_id=dataset.artifact_id, run_id=run_id, relation="generated_from") for p in parents]
    shard_ids: list[str] = []
    if shards_dir and mix:
        shards = read_mix_shards(shards_dir, mix)
        for path, shard_id, sha, size in zip(shards.paths, shards.artifact_ids, shards.sha256s, shards.num_bytes):
            artifacts.append(
                Artifact(
                    kind="shard", uri=path, sha256=sha, num_bytes=size, created_by_run=run_id, metadata={"mix": mix}
                )
            )
            edges.append(Edge(parent_id=dataset.artifact_id, child_id=shard_id, run_id=run_id, relation="sharded_into"))
            shard_ids.append(shard_id)
    with LineageStore(lineage_db) as store:
        store.record_artifacts(artifacts)
        store.record_edges(edges)
    return {"dataset": [dataset.artifact_id], "shards": shard_ids}


@task(name="filter-rl-prompts")
def filter_rl_prompts_task(
    checkpoint_dir: str,
    records_path: str,
    out_path: str,
    k: int = 4,
    max_prompts: int = 64,
    max_new_tokens: int = 16,
    seed: int = 0,
) -> tuple[str, bool]:
    """Keep the RL prompts the current model solves sometimes but not always (0 < pass rate < 1).

    Returns the kept prompts' file and whether it fell back: when no prompt qualifies (an early tiny
    model solves none) every prompt is kept, with a warning, so that the RL stage still has data, and
    the caller counts the fallback.
    """
    from data_specs.stages import RLSpec
    from keye_model.model import KeyeForConditionalGeneration
    from keye_model.processor import KeyeProcessor, ProcessorConfig
    from keye_model.rewards import RewardFunction
    from keye_model.tokenizer import load_tokenizer
    from keye_model.training.rl import RLPrompt
    from keye_model.training.rl_iteration import pass_rate_filter

    records = read_jsonl(records_path, Record)[:max_prompts]
    model = KeyeForConditionalGeneration.from_pretrained(checkpoint_dir).eval()
    processor = KeyeProcessor(load_tokenizer(checkpoint_dir), ProcessorConfig.load(checkpoint_dir))
    prompts = [
        RLPrompt(id=r.id, reference=r.answer, conversation=user_turn(r)) for r in records if r.modality != "video"
    ]
    result = pass_rate_filter(
        model, processor, prompts, k, RewardFunction(), spec=RLSpec(max_new_tokens=max_new_tokens), seed=seed
    )
    kept_ids = {p.id for p in result.kept}
    fell_back = not kept_ids
    if fell_back:
        log.warning(
            "no RL prompt has a pass rate strictly between 0 and 1 under %s; keeping all %d",
            checkpoint_dir,
            len(records),
        )
        kept_ids = {r.id for r in records}
    log.info("RL prompts: kept %d of %d by pass rate", len(kept_ids), len(records))
    return str(write_jsonl([r for r in records if r.id in kept_ids], out_path)), fell_back


@task(name="record-fallbacks", retries=2, retry_delay_seconds=5)
def record_fallbacks_task(lineage_db: str, run_id: str, fallbacks: list[str]) -> int:
    """The run's ``fallbacks`` metric: how many steps had nothing to work on and did something else
    (each is also in the log and the UI). A healthy run keeps it at 0."""
    for note in fallbacks:
        log.warning("fallback taken: %s", note)
    with LineageStore(lineage_db) as store:
        store.record_metrics(
            [Metric(run_id=run_id, stage="posttrain", step=0, name="fallbacks", value=float(len(fallbacks)))]
        )
    return len(fallbacks)


def nonempty(path: str | None) -> bool:
    return bool(path) and Path(path).exists() and Path(path).stat().st_size > 0
