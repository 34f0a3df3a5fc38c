"""``keye run`` (the pipeline flow in Prefect's local mode, or against PREFECT_API_URL when set) and
``keye demo`` (the same on the tiny preset, then a summary of where everything is)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from data_specs.presets import PRESETS


def prefect_environment() -> None:
    """Our libraries log with ``logging``; Prefect shows those logs in the UI when told their names."""
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "keye_model,tasks,flows")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, help_text in (("run", "run the whole pipeline (the `keye` flow)"),
                            ("demo", "run the pipeline on the tiny preset and print where its outputs are")):
        p = subparsers.add_parser(name, help=help_text)
        p.add_argument("--run-dir", default="runs/demo", help="folder for data, checkpoints and lineage")
        p.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                       help="stages, model, data and evaluation sizes (data_specs/presets.py)")
        p.add_argument("--stages", nargs="*", default=None, help="train only these stages (default: all)")
        p.add_argument("--review-mode", default="auto", choices=("auto", "ui", "suspend"))
        p.add_argument("--local-folder", default=None, help="also curate your own images/videos/JSONL from here")
        p.add_argument("--records-per-source", type=int, default=None,
                       help="records of each packaged source (default: the preset's sizes)")
        p.add_argument("--local-folder-limit", type=int, default=None,
                       help="most records read from --local-folder (default: the whole folder)")
        p.add_argument("--launcher", default="inprocess", choices=("inprocess", "torchrun", "deepspeed"))
        p.add_argument("--num-processes", type=int, default=1, help="ranks per node for torchrun/deepspeed")
        p.add_argument("--task-runner", default="thread", choices=("thread", "dask"),
                       help="where curation tasks run: threads here, or a Dask cluster (PREFECT_DASK_ADDRESS)")
        p.add_argument("--json", action="store_true", help="print the flow's result as JSON")
        p.set_defaults(func=run_pipeline)


def run_pipeline(args: argparse.Namespace) -> int:
    prefect_environment()
    from flows.keye import keye

    started = time.monotonic()
    result = keye(run_dir=args.run_dir, preset=args.preset, stages=args.stages, review_mode=args.review_mode,
                  local_folder=args.local_folder, records_per_source=args.records_per_source,
                  launcher=args.launcher, num_processes=args.num_processes, task_runner=args.task_runner,
                  local_folder_limit=args.local_folder_limit)
    wall_s = time.monotonic() - started
    train_s = sum(json.loads(p.read_text())["wall_s"]
                  for p in Path(result["run_dir"], "stages").glob("*/result.json"))
    if args.json:
        print(json.dumps({**result, "wall_s": wall_s, "train_s": train_s}, indent=2, default=str))
        return 0
    print(f"\nKeye pipeline finished in {wall_s:.0f} s (run folder {result['run_dir']}); "
          f"the training stages' runners took {train_s:.0f} s of it")
    print(f"  lineage:      {result['lineage_db']}   (keye lineage mix --stage annealing --db ...)")
    print(f"  shards:       {os.path.join(result['run_dir'], 'shards')}/<mix>/manifest.json")
    for stage, path in result["checkpoints"].items():
        print(f"  {stage:<12}  {path}")
    for stage, metrics in result["evaluation"].items():
        shown = ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items()) if isinstance(v, float))[:160]
        print(f"  eval {stage:<7} {shown}")
    return 0
