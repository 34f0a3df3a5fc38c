"""What the Prefect UI shows for a stage: table rows and a loss-curve picture.

Plain functions returning data; the flows turn them into Prefect artifacts. The picture is drawn with
Pillow (no plotting library needed) and embedded in markdown as a data URI, so it renders offline.

Artifact keys are global on a Prefect server (the UI's "latest" ``mix-annealing`` is the newest one of
ANY run), so every key we write ends with the run folder's slug (``artifact_key``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

#: What Prefect accepts as an artifact key.
KEY_PATTERN = re.compile(r"[a-z0-9-]+")


def run_slug(run_dir: str | Path) -> str:
    """A short key-safe name of a run folder: its last part lower-cased, other characters as ``-``, at most
    24 characters, then 6 hex digits of its absolute path, so two folders named alike stay apart.

    Example: ``runs/Demo_1`` (at /work/runs/Demo_1) -> ``demo-1-`` + sha256("/work/runs/Demo_1")[:6].
    """
    path = Path(run_dir).resolve()
    name = re.sub(r"[^a-z0-9]+", "-", path.name.lower())[:24].strip("-")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:6]
    return f"{name}-{digest}" if name else digest


def key_safe(kind: str) -> str:
    """``kind`` as Prefect accepts in an artifact key: lower case, other characters as ``-``
    (``progress-reward_rl`` -> ``progress-reward-rl``)."""
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-")


def artifact_key(kind: str, run_dir: str | Path) -> str:
    """``<kind>-<run slug>``: ``kind`` (e.g. ``mix-annealing``, ``stage-sft``) made key-safe, then the slug."""
    key = key_safe(kind) + "-" + run_slug(run_dir)
    assert KEY_PATTERN.fullmatch(key), key
    return key


def read_metrics(metrics_file: str | Path) -> list[dict[str, Any]]:
    path = Path(metrics_file)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metrics_rows(metrics: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step with rounded numbers, for a table artifact."""
    return [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()} for row in metrics]


def loss_curve_png(values: Sequence[float], *, width: int = 480, height: int = 200, title: str = "loss") -> bytes:
    """A line chart of ``values`` against step (1-based), with min/max labels, as PNG bytes."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 50, width - 10, 20, height - 25
    draw.rectangle([left, top, right, bottom], outline="#999999")
    draw.text((left, 4), title, fill="black")
    if values:
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        n = len(values)
        points = [
            (left + (right - left) * (i / max(1, n - 1)), bottom - (bottom - top) * (v - lo) / span)
            for i, v in enumerate(values)
        ]
        if n == 1:
            draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill="#1f77b4")
        else:
            draw.line(points, fill="#1f77b4", width=2)
        draw.text((2, top), f"{hi:.3g}", fill="black")
        draw.text((2, bottom - 10), f"{lo:.3g}", fill="black")
        draw.text((right - 60, bottom + 6), f"step {n}", fill="black")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def loss_curve_markdown(stage: str, metrics: Sequence[dict[str, Any]], checkpoint_dir: str) -> str:
    """Markdown with the loss curve inline and the checkpoint's location."""
    losses = [float(m["loss"]) for m in metrics if isinstance(m.get("loss"), (int, float))]
    png = base64.b64encode(loss_curve_png(losses, title=f"{stage} loss")).decode()
    last = f"{losses[-1]:.4f}" if losses else "n/a"
    return (
        f"### Stage `{stage}`\n\n![{stage} loss](data:image/png;base64,{png})\n\n"
        f"- steps: {len(metrics)}\n- final loss: {last}\n- checkpoint: `{checkpoint_dir}`\n"
    )


def publish_stage_report(stage: str, stage_dir: str, checkpoint_dir: str, run_dir: str) -> None:
    """Loss curve + checkpoint location (markdown, key ``stage-<stage>-<run slug>``) and per-step metrics
    (table, ``metrics-<stage>-<run slug>``) in the Prefect UI."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    metrics = read_metrics(Path(stage_dir) / "metrics.jsonl")
    create_markdown_artifact(
        loss_curve_markdown(stage, metrics, checkpoint_dir),
        key=artifact_key(f"stage-{stage}", run_dir),
        description=f"Stage {stage}: loss curve and checkpoint",
    )
    if metrics:
        create_table_artifact(
            metrics_rows(metrics),
            key=artifact_key(f"metrics-{stage}", run_dir),
            description=f"Stage {stage}: metrics per step",
        )
