"""Evaluation results into lineage, and a markdown table comparing checkpoints stage by stage.

Lineage: one ``eval`` artifact per (checkpoint, run, stage) holding the metrics in its metadata, an
edge ``checkpoint -> eval`` (relation ``evaluated_from``), and every value as a ``Metric`` named
``eval/<metric>`` in the stage it belongs to, so ``store.metrics(run_id, stage=...)`` lists them beside
the training losses.

Table: one column per stage in pipeline order, one row per metric, and a last column with the change
from the first stage to the last. Worked example: rows [("sft", {"vqa/accuracy": 0.2}),
("mpo", {"vqa/accuracy": 0.25})] give the line ``| vqa/accuracy | 0.200 | 0.250 | +0.050 |``.

Summary: the top-level ``keye`` run's own artifact, one row per stage (its metrics, its checkpoint and a
link to its loss-curve artifact), so the run a person opens in the UI shows the outcome.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence

from prefect import task

from tasks.lineage import Artifact, Edge, LineageStore, Metric
from tasks.reports import artifact_key

log = logging.getLogger(__name__)

METRIC_PREFIX = "eval/"


def eval_artifact(checkpoint_id: str, run_id: str, stage: str, metrics: Mapping[str, float]) -> Artifact:
    """The ``eval`` artifact of one evaluation: its uri names the run, stage and checkpoint artifact id,
    its hash the values (so the same evaluation written twice is one artifact)."""
    values = {name: float(value) for name, value in sorted(metrics.items())}
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
    return Artifact(
        kind="eval",
        uri=f"eval://{run_id}/{stage}/{checkpoint_id}",
        sha256=digest,
        num_records=len(values),
        created_by_run=run_id,
        metadata={
            "stage": stage,
            "checkpoint_id": checkpoint_id,
            "metrics": {k: (None if math.isnan(v) else v) for k, v in values.items()},
        },
    )


def _checkpoint_id(store: LineageStore, checkpoint_uri: str, run_id: str, stage: str) -> str:
    """The recorded checkpoint artifact named by ``checkpoint_uri`` (an id or uri); recorded now if unknown."""
    try:
        return store.resolve(checkpoint_uri)
    except ValueError as error:
        if not str(error).startswith("no artifact"):  # e.g. several versions at one uri: pass an id
            raise
    checkpoint = Artifact(kind="checkpoint", uri=checkpoint_uri, metadata={"stage": stage})
    store.record_artifacts([checkpoint])
    log.warning(
        "checkpoint %s was not in the lineage store; recorded it without a content hash (run %s)",
        checkpoint_uri,
        run_id,
    )
    return checkpoint.artifact_id


def record_eval_metrics(
    store: LineageStore, run_id: str, stage: str, checkpoint_uri: str, metrics: Mapping[str, float], *, step: int = 0
) -> Artifact:
    """Write the metrics (as ``eval/<name>``), the eval artifact and its edge from the checkpoint.

    ``checkpoint_uri`` is the checkpoint's artifact id or uri (tasks.train records the resolved directory
    path); a checkpoint the store has never seen is recorded first. Returns the eval artifact.
    """
    if not metrics:
        raise ValueError(f"no metrics to record for checkpoint {checkpoint_uri} (run {run_id}, stage {stage})")
    parent = _checkpoint_id(store, checkpoint_uri, run_id, stage)
    artifact = eval_artifact(parent, run_id, stage, metrics)
    store.record_artifacts([artifact])
    store.record_edges(
        [Edge(parent_id=parent, child_id=artifact.artifact_id, run_id=run_id, relation="evaluated_from")]
    )
    store.record_metrics(
        [
            Metric(run_id=run_id, stage=stage, step=step, name=METRIC_PREFIX + name, value=float(value))
            for name, value in metrics.items()
        ]
    )
    log.info("recorded %d eval metrics of %s (stage %s, run %s)", len(metrics), checkpoint_uri, stage, run_id)
    return artifact


def eval_rows(store: LineageStore, run_id: str, stages: Sequence[str]) -> list[tuple[str, dict[str, float]]]:
    """(stage, {metric: value}) for ``stages`` in order, from the ``eval/`` metrics of ``run_id`` (last step)."""
    rows = []
    for stage in stages:
        values = {
            m.name[len(METRIC_PREFIX) :]: m.value
            for m in store.metrics(run_id, stage=stage)
            if m.name.startswith(METRIC_PREFIX)
        }  # ordered by step: the last one wins
        rows.append((stage, values))
    return rows


def _cell(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.3f}"


def comparison_table(rows: Sequence[tuple[str, Mapping[str, float]]]) -> str:
    """Markdown table: metrics down, checkpoints (stage labels, in the given order) across, then the change.

    A metric missing from a stage reads ``n/a``; the change column compares the first and the last stage
    that have the metric. Metric rows are sorted by name.
    """
    if not rows:
        raise ValueError("comparison_table needs at least one (stage, metrics) row")
    labels = [label for label, _ in rows]
    if len(set(labels)) != len(labels):
        raise ValueError(f"comparison_table: stage labels repeat: {labels}")
    names = sorted({name for _, metrics in rows for name in metrics})
    lines = ["| metric | " + " | ".join(labels) + " | change |", "|---|" + "---:|" * len(labels) + "---:|"]
    for name in names:
        values = [metrics.get(name) for _, metrics in rows]
        known = [v for v in values if v is not None and not math.isnan(v)]
        change = f"{known[-1] - known[0]:+.3f}" if len(known) >= 2 else "n/a"
        lines.append(f"| {name} | " + " | ".join(_cell(v) for v in values) + f" | {change} |")
    return "\n".join(lines) + "\n"


# ---- Prefect entry points ------------------------------------------------------------------------


@task(name="record-eval-metrics")
def record_eval_metrics_task(
    db_path: str, run_id: str, stage: str, checkpoint_uri: str, metrics: dict[str, float]
) -> str:
    """Open the store, record the evaluation, return the eval artifact id."""
    with LineageStore(db_path) as store:
        return record_eval_metrics(store, run_id, stage, checkpoint_uri, metrics).artifact_id


@task(name="publish-eval-comparison")
def publish_comparison_task(rows: list[tuple[str, dict[str, float]]], key: str = "eval-comparison") -> str:
    """The comparison table as a Prefect markdown artifact (and returned)."""
    from prefect.artifacts import create_markdown_artifact

    markdown = comparison_table(rows)
    create_markdown_artifact(markdown=markdown, key=key, description="Evaluation metrics by stage")
    return markdown


#: Metrics folded into another cell of the summary (the accuracy's 95% interval).
INTERVAL = ("vqa/ci95_low", "vqa/ci95_high")


def run_summary_markdown(
    run_dir: str,
    evaluation: Mapping[str, Mapping[str, float]],
    checkpoints: Mapping[str, str],
    chain: Mapping[str, float] | None = None,
    minutes: Mapping[str, float] | None = None,
) -> str:
    """Markdown: one row per stage (``checkpoints``' order, then stages only evaluated), the minutes of
    training done when it finished (``minutes``, ``tasks.train.training_minutes``; "-" where absent), its
    evaluation metrics (accuracy with its 95% interval), its checkpoint and a link to its loss-curve
    artifact; then the post-training chain's numbers (``tasks.chain_report``), when given.

    Example row: ``| sft | 4.3 | 0.812 [0.787, 0.835] | 0.671 | `/runs/x/stages/sft/checkpoint` | [loss](...) |``.
    """
    minutes = minutes or {}
    stages = list(dict.fromkeys([*checkpoints, *evaluation]))
    if not stages:
        return f"### Keye run `{run_dir}`\n\nNo stage has finished in this run folder.\n"
    names = sorted({n for metrics in evaluation.values() for n in metrics} - set(INTERVAL))
    lines = [
        f"### Keye run `{run_dir}`\n",
        "| stage | training min | " + " | ".join(names) + " | checkpoint | report |",
        "|---|---:|" + "---:|" * len(names) + "---|---|",
    ]
    for stage in stages:
        metrics = evaluation.get(stage, {})
        cells = []
        for name in names:
            cell = _cell(metrics.get(name))
            if name == "vqa/accuracy" and all(k in metrics for k in INTERVAL):
                cell += f" [{_cell(metrics[INTERVAL[0]])}, {_cell(metrics[INTERVAL[1]])}]"
            cells.append(cell)
        checkpoint = f"`{checkpoints[stage]}`" if stage in checkpoints else "-"
        link = f"/artifacts/key/{artifact_key(f'stage-{stage}', run_dir)}"  # the UI's page of that key
        report = f"[loss curve]({link})" if stage in checkpoints else "-"
        trained = f"{minutes[stage]:.1f}" if stage in minutes else "-"
        lines.append(f"| {stage} | {trained} | " + " | ".join(cells) + f" | {checkpoint} | {report} |")
    if chain:
        lines += ["", "#### Post-training chain", "", "| number | value |", "|---|---:|"]
        lines += [f"| {name} | {value:g} |" for name, value in chain.items()]
    return "\n".join(lines) + "\n"


@task(name="publish-run-summary")
def publish_run_summary_task(
    run_dir: str,
    evaluation: dict[str, dict[str, float]],
    checkpoints: dict[str, str],
    chain: dict[str, float] | None = None,
    minutes: dict[str, float] | None = None,
) -> str:
    """The summary as a markdown artifact of the calling flow run (key ``summary-<run slug>``), returned."""
    from prefect.artifacts import create_markdown_artifact

    markdown = run_summary_markdown(run_dir, evaluation, checkpoints, chain, minutes)
    create_markdown_artifact(
        markdown=markdown, key=artifact_key("summary", run_dir), description=f"Keye run {run_dir}: stages"
    )
    return markdown
