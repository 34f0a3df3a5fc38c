"""keye lineage: query a run folder's lineage store read-only (runs, ancestry, data mix, metrics, export).

The store is ``<run dir>/lineage.duckdb``; the run folder is ``--run-dir``, else ``$KEYE_RUN_DIR``, else
``runs/demo`` (where ``make demo`` writes), and ``--db`` names another file outright. It is opened
read-only, which DuckDB refuses while a flow process holds the file as its writer; then the command says
so and exits 2 instead of waiting or touching the file. Tables fit the terminal's width (long URIs and
ids are cut in the middle); ``--json`` prints everything uncut for machines.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RUN_DIR_ENV = "KEYE_RUN_DIR"
DEFAULT_RUN_DIR = "runs/demo"
DB_NAME = "lineage.duckdb"  # tasks.layout.RunLayout.lineage_db; not imported so --help stays instant
#: Narrowest a cut column gets; a table wider than the terminal even then is left to wrap.
MIN_CUT_WIDTH = 12
ELLIPSIS = "..."


def default_run_dir() -> str:
    return os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR


def db_path(args: argparse.Namespace) -> str:
    """``--db`` when given, else the run folder's lineage file."""
    return args.db or str(Path(args.run_dir) / DB_NAME)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    if isinstance(value, dt.datetime):  # UTC, to the second: 2025-01-01T12:00:00Z
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def cut_middle(text: str, width: int) -> str:
    """``text`` shortened to ``width`` characters by an ellipsis in the middle, which keeps a URI's scheme
    and its file name: ``cut_middle("file:///runs/demo/shards/x-000001.tar", 20)`` -> ``file:///...00001.tar``.
    """
    if len(text) <= width:
        return text
    keep = max(width - len(ELLIPSIS), 2)
    return text[: keep // 2] + ELLIPSIS + text[len(text) - (keep - keep // 2) :]


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], *, max_width: int | None = None, cut: Sequence[str] = ()
) -> str:
    """Fixed-width text table; floats with 4 decimals, None as '-'.

    When wider than ``max_width``, the columns named in ``cut`` shrink, in that order, each down to
    MIN_CUT_WIDTH before the next is touched (so ids listed last stay whole longest). Example: columns of
    10, 40 and 30 characters (two spaces between) in 60, cutting ``b``: 40 -> 16, and 10 + 16 + 30 + 4 = 60.
    """
    text = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text]) for i, h in enumerate(header)]
    if max_width is not None:
        excess = sum(widths) + 2 * (len(widths) - 1) - max_width
        for i in [header.index(name) for name in cut if name in header]:
            step = max(0, min(excess, widths[i] - max(MIN_CUT_WIDTH, len(header[i]))))
            widths[i] -= step
            excess -= step
        text = [[cut_middle(v, w) for v, w in zip(r, widths)] for r in text]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in text]
    return "\n".join(lines)


def _emit(
    args: argparse.Namespace,
    payload: Any,
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    title: str = "",
    cut: Sequence[str] = (),
) -> None:
    from tasks.lineage.queries import as_jsonable

    if args.json:
        print(json.dumps(as_jsonable(payload), indent=2, sort_keys=True))
        return
    if title:
        print(title)
    print(format_table(header, rows, max_width=shutil.get_terminal_size().columns, cut=cut))


def _open(args: argparse.Namespace):
    from tasks.lineage import LineageStore

    return LineageStore(db_path(args), read_only=True)


def cmd_runs(args: argparse.Namespace) -> int:
    with _open(args) as store:
        runs = store.runs(limit=args.limit)
    if not runs:
        raise ValueError(f"no runs recorded in {db_path(args)}")
    # run ids stay whole (they are what the other commands take); subflows are indented under their root
    _emit(
        args,
        runs,
        ["run_id", "flow", "name", "status", "started", "ended"],
        [
            [r.run_id, ("  " if r.parent_run_id else "") + r.flow_name, r.run_name, r.status, r.started_at, r.ended_at]
            for r in runs
        ],
        title=f"{len(runs)} runs in {db_path(args)} (newest first; subflows indented under their run; UTC)",
        cut=["name", "flow"],
    )
    return 0


def _walk(args: argparse.Namespace, upward: bool) -> int:
    with _open(args) as store:
        start = store.resolve(args.id_or_uri)
        nodes = (store.ancestors if upward else store.descendants)(args.id_or_uri, max_depth=args.max_depth)
    word = "ancestors" if upward else "descendants"
    _emit(
        args,
        {"artifact_id": start, word: nodes},
        ["depth", "kind", "artifact_id", "uri", "records", "via"],
        [[n.depth, n.kind, n.artifact_id, n.uri, n.num_records, n.via] for n in nodes],
        title=f"{len(nodes)} {word} of {start}",
        cut=["via", "uri", "artifact_id"],
    )
    return 0


def cmd_ancestors(args: argparse.Namespace) -> int:
    return _walk(args, upward=True)


def cmd_descendants(args: argparse.Namespace) -> int:
    return _walk(args, upward=False)


def stage_mix(stage: str, preset: str) -> str:
    """The data mix a training stage trains on (``StageSpec.data_mix``); ValueError for an unknown stage."""
    from data_specs.presets import get_stage

    return get_stage(preset, stage).data_mix


def cmd_mix(args: argparse.Namespace) -> int:
    name = args.mix or stage_mix(args.stage, args.preset)
    with _open(args) as store:
        report = store.mix(name, run_id=args.run)
    source = "summed from shards" if report.from_shards else "mix totals"
    via = f" (the mix of stage {args.stage})" if args.stage else ""
    _emit(
        args,
        report,
        ["source", "modality", "planned(tok)", "realized(tok)", "drift(tok)", "realized(smp)", "samples", "tokens"],
        [
            [
                m.source,
                m.modality,
                m.planned_ratio,
                m.realized_ratio_tokens,
                m.drift_tokens,
                m.realized_ratio_samples,
                m.num_samples,
                m.num_tokens,
            ]
            for m in report.lines
        ],
        title=f"mix {report.mix}{via}, run {report.run_id} ({source})\n"
        "The plan is a share of TOKENS: drift(tok) = realized(tok) - planned(tok); realized(smp) is the "
        "share of samples, for reference only.",
    )
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    with _open(args) as store:
        points = store.metrics(args.run_id, stage=args.stage, name=args.name)
    if not points:
        raise ValueError(f"no metrics for run {args.run_id!r}" + (f" stage {args.stage!r}" if args.stage else ""))
    _emit(
        args,
        points,
        ["stage", "step", "name", "value"],
        [[p.stage, p.step, p.name, p.value] for p in points],
        cut=["name"],
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with _open(args) as store:
        events = store.export_openlineage(args.run_id, namespace=args.namespace)
    _emit(
        args,
        events,
        ["eventType", "eventTime", "job", "runId", "inputs", "outputs"],
        [
            [e["eventType"], e["eventTime"], e["job"]["name"], e["run"]["runId"], len(e["inputs"]), len(e["outputs"])]
            for e in events
        ],
        cut=["job", "eventTime"],
    )
    return 0


def _guarded(func):
    """A locked store is an expected condition, not a crash: report it and exit 2 like main() does."""

    def run(args: argparse.Namespace) -> int:
        from tasks.lineage import LineageLockedError

        try:
            return func(args)
        except LineageLockedError as exc:
            print(f"keye lineage {args.lineage_command}: error: {exc}", file=sys.stderr)
            return 2

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    summary = __doc__.splitlines()[0].split(": ", 1)[1]
    parser = subparsers.add_parser("lineage", help="query a run's lineage store (read-only)", description=summary)
    commands = parser.add_subparsers(dest="lineage_command", required=True)

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--run-dir",
            default=default_run_dir(),
            help=f"run folder whose {DB_NAME} to read (default: ${RUN_DIR_ENV} or {DEFAULT_RUN_DIR}; now %(default)s)",
        )
        sub.add_argument("--db", default=None, help=f"a lineage DuckDB file to read instead of <run-dir>/{DB_NAME}")
        sub.add_argument("--json", action="store_true", help="print JSON (uncut) instead of a table")
        sub.set_defaults(func=_guarded(func))
        return sub

    sub = add("runs", cmd_runs, "the flow runs recorded: id, flow, Prefect run name, status, start and end")
    sub.add_argument("--limit", type=int, default=None, help="show at most this many runs")
    for name, func, help_text in (
        ("ancestors", cmd_ancestors, "what an artifact was made from, back to sources"),
        ("descendants", cmd_descendants, "everything made from an artifact"),
    ):
        sub = add(name, func, help_text)
        sub.add_argument("id_or_uri", metavar="ID_OR_URI", help="artifact id, URI or local path")
        sub.add_argument("--max-depth", type=int, default=10_000, help="levels to walk (default %(default)s)")
    sub = add("mix", cmd_mix, "planned vs realized token shares of a data mix")
    which = sub.add_mutually_exclusive_group(required=True)
    which.add_argument("--mix", help="data mix name (image_text, multitask, annealing, vision_expert, sft ...)")
    which.add_argument("--stage", help="training stage (stage1 ... sft): shows the mix that stage trains on")
    sub.add_argument("--preset", default="tiny", help="preset whose stages --stage looks in (default %(default)s)")
    sub.add_argument("--run", default=None, help="run id (default: the latest run that recorded the mix)")
    sub = add("metrics", cmd_metrics, "metrics of a run")
    sub.add_argument("run_id", metavar="RUN_ID")
    sub.add_argument("--stage", default=None, help="only this training stage's metrics")
    sub.add_argument("--name", default=None, help="only this metric")
    sub = add("export", cmd_export, "a run as OpenLineage RunEvents")
    sub.add_argument("run_id", metavar="RUN_ID")
    sub.add_argument("--namespace", default="keye", help="OpenLineage job namespace (default %(default)s)")
