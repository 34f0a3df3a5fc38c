"""Held-out evaluation data the pipeline makes itself: scene videos rendered with a seed no training run
uses, so temporal localization is scored on videos no mix contains.

Training renders scene videos with the run's seed (``SourceSpec.seed``); the held-out set uses
``HELD_OUT_SEED_OFFSET + seed``, which no curation run reaches by accident (seeds are small integers).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from tasks.sources import SourceSpec, collect_records

#: Added to the run's seed for held-out renders; far above any seed a run is given.
HELD_OUT_SEED_OFFSET = 1_000_003


def held_out_scene_videos(out_dir: str | Path, num_videos: int, seed: int, max_side_px: int) -> str:
    """Render ``num_videos`` scene videos with the held-out seed; returns their records as JSON Lines."""
    out = Path(out_dir)
    spec = SourceSpec(name="scene-videos", limit=num_videos, seed=HELD_OUT_SEED_OFFSET + seed, max_side_px=max_side_px)
    collected = collect_records(spec, out)
    path = out / "held_out_temporal.jsonl"
    path.write_text("".join(json.dumps(json.loads(r.to_json())) + "\n" for r in collected.records))
    return str(path)


@task(name="held-out-scene-videos")
def held_out_scene_videos_task(out_dir: str, num_videos: int, seed: int, max_side_px: int) -> str:
    return held_out_scene_videos(out_dir, num_videos, seed, max_side_px)
