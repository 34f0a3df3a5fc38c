"""What the post-training chain made of its data, as numbers a run reports beside its evaluations.

Read from the files the chain writes in ``<run>/posttrain/``: LongCoT paths by quality tier (kept and
rejected together: ``assessed.jsonl`` + ``assessed_rejects.jsonl``), how many samples went to human
review (every B and borderline A) and how many it rejected, how many were kept and how many SFT
records the cold-start set mixes in beside them (``coldstart.jsonl``), the MPO pairs by kind
(``model-vs-model``: both sides sampled from the model, i.e. ``correct-vs-wrong`` and ``score-gap``;
``reference-vs-wrong`` otherwise), and the RL prompts the pass-rate filter kept. Recorded as lineage
metrics of the run (stage ``posttrain``) by ``record_chain_metrics_task``.

Example: 384 paths, tiers A 155 / B 30 / C 199 -> ``longcot/pass_share`` 0.482; 232 pairs of which 124
model-vs-model -> ``pairs/model_vs_model_share`` 0.534.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from prefect import task

from tasks.lineage import LineageStore, Metric
from tasks.posttrain_data import MIXED_IN_FROM
from tasks.rl_rounds import count_lines

#: Pair kinds whose two sides both come from the model's own sampled paths.
MODEL_VS_MODEL = ("correct-vs-wrong", "score-gap")


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def chain_metrics(posttrain_dir: str | Path) -> dict[str, float]:
    """LongCoT tiers, review, pair kinds and RL prompts of the chain in ``posttrain_dir`` (missing files: 0)."""
    folder = Path(posttrain_dir)
    kept = _rows(folder / "assessed.jsonl")  # what step 4 sees; every B and borderline A goes to people
    assessed = kept + _rows(folder / "assessed_rejects.jsonl")
    tiers = Counter(row["tier"] for row in assessed)
    pairs = Counter(row["reason"] for row in _rows(folder / "pairs.jsonl"))
    paths = len(assessed)
    model_pairs = sum(pairs[k] for k in MODEL_VS_MODEL)
    metrics = {
        "longcot/paths": float(paths),
        **{f"longcot/tier_{t}": float(tiers[t]) for t in ("A", "B", "C")},
        "longcot/pass_share": (tiers["A"] + tiers["B"]) / paths if paths else 0.0,
        "longcot/to_review": float(sum(row["tier"] == "B" or row["borderline"] for row in kept)),
        "longcot/review_rejected": float(count_lines(str(folder / "review_rejects.jsonl"))),
        "longcot/kept": float(count_lines(str(folder / "cot_samples.jsonl"))),
        "longcot/mixed_in": float(sum(MIXED_IN_FROM in row["meta"] for row in _rows(folder / "coldstart.jsonl"))),
        "pairs/total": float(sum(pairs.values())),
        "pairs/model_vs_model": float(model_pairs),
        "pairs/model_vs_model_share": model_pairs / sum(pairs.values()) if pairs else 0.0,
        "rl_prompts/kept": float(count_lines(str(folder / "rl_prompts.jsonl"))),
    }
    return metrics


@task(name="record-chain-metrics")
def record_chain_metrics_task(lineage_db: str, run_id: str, posttrain_dir: str) -> dict[str, float]:
    """``chain_metrics`` into lineage (stage ``posttrain``, step 0), returned."""
    metrics = chain_metrics(posttrain_dir)
    with LineageStore(lineage_db) as store:
        store.record_metrics(
            [Metric(run_id=run_id, stage="posttrain", step=0, name=k, value=v) for k, v in metrics.items()]
        )
    return metrics
