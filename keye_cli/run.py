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


RUN_DESCRIPTION = (
    "Run the pipeline flow (keye): curate the data mixes, pre-train stages 1-4, post-train (SFT ... alignment "
    "RL) and evaluate every stage, all in --run-dir. Runs in Prefect's local mode, or against the server at "
    "PREFECT_API_URL when set. Rerunning in the same folder skips finished work."
)
DEMO_DESCRIPTION = (
    "keye run on the demo preset (a tiny model trained long enough to learn, on CPU), then a summary: "
    "where the lineage, shards and checkpoints are, and a per-stage table of held-out metrics."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, help_text, description in (
        ("run", "run the whole pipeline (the keye flow)", RUN_DESCRIPTION),
        ("demo", "run the pipeline on the demo preset and print its per-stage table", DEMO_DESCRIPTION),
    ):
        p = subparsers.add_parser(name, help=help_text, description=description)
        p.add_argument(
            "--run-dir",
            default="runs/demo",
            help="folder for data, shards, checkpoints and lineage.duckdb (default runs/demo); rerunning in it "
            "skips finished work",
        )
        p.add_argument(
            "--preset",
            default="demo" if name == "demo" else "tiny",
            choices=sorted(PRESETS),
            help="stages, model, data and evaluation sizes (data_specs/presets.py)",
        )
        p.add_argument(
            "--stages",
            nargs="*",
            default=None,
            help="train only these stages (default: all); the stages they start from must have finished in "
            "--run-dir (README: Using it)",
        )
        p.add_argument(
            "--review-mode",
            default="auto",
            choices=("auto", "ui", "suspend"),
            help="LongCoT human review: auto applies the stated policy; ui pauses for the form in the Prefect UI "
            "(or keye review answer); suspend ends the process until answered (deployment runs); default auto",
        )
        p.add_argument("--local-folder", default=None, help="also curate your own images/videos/JSONL from here")
        p.add_argument(
            "--records-per-source",
            type=int,
            default=None,
            help="records of each packaged source (default: the preset's sizes)",
        )
        p.add_argument(
            "--local-folder-limit",
            type=int,
            default=None,
            help="most records read from --local-folder (default: the whole folder)",
        )
        p.add_argument(
            "--launcher",
            default="inprocess",
            choices=("inprocess", "torchrun", "deepspeed"),
            help="how each stage starts: in this process (one rank), or torchrun / deepspeed with --num-processes",
        )
        p.add_argument("--num-processes", type=int, default=1, help="ranks per node for torchrun/deepspeed")
        p.add_argument(
            "--task-runner",
            default="thread",
            choices=("thread", "dask"),
            help="where curation tasks run: threads here, or a Dask cluster (PREFECT_DASK_ADDRESS)",
        )
        p.add_argument("--tokenizer", default=None, help="a local tokenizer directory (e.g. Qwen3's)")
        p.add_argument("--vision-init", default=None, help="a local SigLIP directory the first stage's ViT starts from")
        p.add_argument("--llm-init", default=None, help="a local Qwen3 directory stage 1's LLM starts from")
        p.add_argument(
            "--dry-run",
            action="store_true",
            help="check the input directories and print each stage's plan (data, steps, ZeRO, memory, launch)",
        )
        p.add_argument(
            "--seed",
            type=int,
            default=0,
            help="seeds data picks, shard order, model init and sampling (default 0); the easy-vqa test questions "
            "evaluated stay the same",
        )
        p.add_argument("--json", action="store_true", help="print the flow's result as JSON")
        p.set_defaults(func=run_pipeline)


def dry_run(args: argparse.Namespace) -> int:
    """Print the plan of every stage to run; reads no data and trains nothing."""
    from tasks.layout import RunLayout
    from tasks.plan import format_plan, plan_run, resolve_run_preset
    from tasks.train import LaunchConfig

    preset = resolve_run_preset(args.preset, args.tokenizer, args.vision_init, args.llm_init)
    launch = LaunchConfig(launcher=args.launcher, num_processes=args.num_processes)
    layout = RunLayout(args.run_dir)
    for line in format_plan(plan_run(preset, layout, launch, args.stages), preset, layout, launch):
        print(line)
    return 0


def run_pipeline(args: argparse.Namespace) -> int:
    if args.dry_run:
        return dry_run(args)
    prefect_environment()
    from flows.keye import keye

    started = time.monotonic()
    result = keye(
        run_dir=args.run_dir,
        preset=args.preset,
        stages=args.stages,
        review_mode=args.review_mode,
        local_folder=args.local_folder,
        records_per_source=args.records_per_source,
        launcher=args.launcher,
        num_processes=args.num_processes,
        task_runner=args.task_runner,
        local_folder_limit=args.local_folder_limit,
        tokenizer=args.tokenizer,
        vision_init=args.vision_init,
        llm_init=args.llm_init,
        seed=args.seed,
    )
    wall_s = time.monotonic() - started
    train_s = sum(json.loads(p.read_text())["wall_s"] for p in Path(result["run_dir"], "stages").glob("*/result.json"))
    if args.json:
        print(json.dumps({**result, "wall_s": wall_s, "train_s": train_s}, indent=2, default=str))
        return 0
    print(
        f"\nKeye pipeline finished in {wall_s:.0f} s (run folder {result['run_dir']}); "
        f"the training stages' runners took {train_s:.0f} s of it"
    )
    print(f"  lineage:      {result['lineage_db']}   (keye lineage mix --stage annealing --db ...)")
    print(f"  shards:       {os.path.join(result['run_dir'], 'shards')}/<mix>/manifest.json")
    for stage, path in result["checkpoints"].items():
        print(f"  {stage:<12}  {path}")
    print()
    for line in stage_table(result["evaluation"], result.get("training_minutes")):
        print(line)
    for line in chain_lines(result.get("chain") or {}, hint_tables(args.preset, result["run_dir"])):
        print(line)
    print(f"\nfallbacks taken: {fallbacks_taken(result['lineage_db'])} (a healthy run takes none)")
    return 0


#: Columns of the per-stage table: (metric, header); a stage without a metric shows "-".
TABLE_COLUMNS = (
    ("vqa/accuracy", "easy-vqa acc"),
    ("vqa/majority_baseline", "majority"),
    ("vqa/accuracy/open", "open qs"),
    ("caption/loss", "caption loss"),
    ("caption/loss_without_image", "  w/o image"),
    ("alignment/compliance", "instr. follow"),
    ("reward/accuracy_no_think", "RM no_think"),
    ("reward/accuracy_think", "RM think"),
    ("temporal/mean_iou", "temporal IoU"),
    ("probe/accuracy", "ViT probe"),
    ("probe/random_init_accuracy", "random ViT"),
)


def stage_table(evaluation: dict[str, dict[str, float]], minutes: dict[str, float] | None = None) -> list[str]:
    """Held-out metrics per stage in pipeline order: the minutes of training done when the stage finished
    (``tasks.train.training_minutes``; with the accuracy, the curve of held-out accuracy against training
    time), then accuracy with its 95% interval and the rest.

    Example row: ``sft           4.3  0.812 [0.787, 0.835]   0.671   ...``.
    """
    minutes = minutes or {}
    header = f"{'stage':<11} {'train min':>9}  {'easy-vqa acc [95% interval]':<28}" + "".join(
        f"{h:>14}" for _, h in TABLE_COLUMNS[1:]
    )
    lines = [header, "-" * len(header)]
    for stage, metrics in evaluation.items():
        acc = metrics.get("vqa/accuracy")
        cell = (
            f"{acc:.3f} [{metrics['vqa/ci95_low']:.3f}, {metrics['vqa/ci95_high']:.3f}]"
            if acc is not None and "vqa/ci95_low" in metrics
            else "-"
        )
        rest = "".join(f"{metrics[k]:>14.3f}" if k in metrics else f"{'-':>14}" for k, _ in TABLE_COLUMNS[1:])
        trained = f"{minutes[stage]:>9.1f}" if stage in minutes else f"{'-':>9}"
        lines.append(f"{stage:<11} {trained}  {cell:<28}{rest}")
    return lines


def chain_lines(chain: dict[str, float], hints: dict[str, dict[str, float]]) -> list[str]:
    """The post-training chain in a few lines: LongCoT tiers, pair kinds, RL prompts, the hint tables."""
    if not chain:
        return []
    c = {k: int(v) if k.split("/")[-1] not in ("pass_share", "model_vs_model_share") else v for k, v in chain.items()}
    lines = [
        "",
        f"LongCoT paths {c['longcot/paths']}: tier A {c['longcot/tier_A']}, B {c['longcot/tier_B']}, "
        f"C {c['longcot/tier_C']} ({c['longcot/pass_share']:.0%} pass); {c['longcot/to_review']} to human review "
        f"({c['longcot/review_rejected']} rejected), {c['longcot/kept']} samples kept; cold-start mixes in "
        f"{c.get('longcot/mixed_in', 0)} SFT records",
        f"MPO pairs {c['pairs/total']}: model-vs-model {c['pairs/model_vs_model']} "
        f"({c['pairs/model_vs_model_share']:.0%}); RL prompts kept by pass rate: {c['rl_prompts/kept']}",
    ]
    for stage, table in hints.items():
        groups = int(table.get("gspo/groups", 0))
        cells = [f"{k.removeprefix('gspo/all_wrong_')} {v:.1%}" for k, v in table.items() if "all_wrong" in k]
        lines.append(f"{stage} all-wrong rollout groups (of {groups}): " + " -> ".join(cells))
    return lines


def hint_tables(preset: str, run_dir: str) -> dict[str, dict[str, float]]:
    """Each hinting RL stage's table: the all-wrong share of its rollout groups with no hint, then after
    hints up to L1..L5 (SPEC: 25.6% -> 13.4% -> ... -> 0.2%), from the stage's own metrics."""
    from data_specs.presets import get_preset
    from tasks.layout import RunLayout
    from tasks.rl_rounds import hint_table

    layout = RunLayout(run_dir)
    hinting = [s.name for s in get_preset(preset).stages if s.rl is not None and s.rl.max_hint_level > 0]
    tables = {name: hint_table(layout.stage_dir(name)) for name in hinting}
    return {name: table for name, table in tables.items() if table}


def fallbacks_taken(lineage_db: str) -> int:
    """The newest ``fallbacks`` metric the post-training chain recorded (0 when none was recorded)."""
    from tasks.lineage import LineageStore

    with LineageStore(lineage_db, read_only=True) as store:
        row = store.con.execute(
            "select m.value from metrics m join runs r using (run_id) "
            "where m.name = 'fallbacks' order by r.started_at desc limit 1"
        ).fetchone()
    return int(row[0]) if row else 0
