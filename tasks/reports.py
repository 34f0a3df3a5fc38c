"""What the Prefect UI shows for a stage: table rows and a loss-curve picture.

Plain functions returning data; the flows turn them into Prefect artifacts. The picture is drawn with
Pillow (no plotting library needed) and embedded in markdown as a data URI, so it renders offline.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw


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


def publish_stage_report(stage: str, stage_dir: str, checkpoint_dir: str) -> None:
    """Loss curve + checkpoint location (markdown) and per-step metrics (table) in the Prefect UI."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    metrics = read_metrics(Path(stage_dir) / "metrics.jsonl")
    key = stage.replace("_", "-").lower()
    create_markdown_artifact(
        loss_curve_markdown(stage, metrics, checkpoint_dir),
        key=f"stage-{key}",
        description=f"Stage {stage}: loss curve and checkpoint",
    )
    if metrics:
        create_table_artifact(
            metrics_rows(metrics), key=f"metrics-{key}", description=f"Stage {stage}: metrics per step"
        )
