"""``keye lineage``: query the lineage store read-only (ancestry, descendants, data mix, metrics, export).

The store is opened read-only, which DuckDB refuses while a flow process holds the file as its writer;
then the command says so and exits 2 instead of waiting or touching the file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

DEFAULT_DB = "runs/lineage.duckdb"
DB_ENV = "KEYE_LINEAGE_DB"


def default_db() -> str:
    return os.environ.get(DB_ENV) or DEFAULT_DB


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Fixed-width text table; floats with 4 decimals, None as '-'."""
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}"
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value)) or "-"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in text]
    return "\n".join(lines)


def _emit(args: argparse.Namespace, payload: Any, header: Sequence[str], rows: Sequence[Sequence[Any]],
          title: str = "") -> None:
    from tasks.lineage.queries import as_jsonable

    if args.json:
        print(json.dumps(as_jsonable(payload), indent=2, sort_keys=True))
        return
    if title:
        print(title)
    print(format_table(header, rows))


def _walk(args: argparse.Namespace, upward: bool) -> int:
    from tasks.lineage import LineageStore

    with LineageStore(args.db, read_only=True) as store:
        start = store.resolve(args.id_or_uri)
        nodes = (store.ancestors if upward else store.descendants)(args.id_or_uri, max_depth=args.max_depth)
    word = "ancestors" if upward else "descendants"
    _emit(args, {"artifact_id": start, word: nodes},
          ["depth", "kind", "artifact_id", "uri", "records", "via"],
          [[n.depth, n.kind, n.artifact_id, n.uri, n.num_records, n.via] for n in nodes],
          title=f"{len(nodes)} {word} of {start}")
    return 0


def cmd_ancestors(args: argparse.Namespace) -> int:
    return _walk(args, upward=True)


def cmd_descendants(args: argparse.Namespace) -> int:
    return _walk(args, upward=False)


def cmd_mix(args: argparse.Namespace) -> int:
    from tasks.lineage import LineageStore

    with LineageStore(args.db, read_only=True) as store:
        report = store.mix(args.stage, run_id=args.run)
    source = "summed from shards" if report.from_shards else "stage totals"
    _emit(args, report,
          ["source", "modality", "planned", "real_samples", "real_tokens", "drift", "samples", "tokens"],
          [[m.source, m.modality, m.planned_ratio, m.realized_ratio_samples, m.realized_ratio_tokens,
            m.drift_samples, m.num_samples, m.num_tokens] for m in report.lines],
          title=f"stage {report.stage}, run {report.run_id} ({source})")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from tasks.lineage import LineageStore

    with LineageStore(args.db, read_only=True) as store:
        points = store.metrics(args.run_id, stage=args.stage, name=args.name)
    if not points:
        raise ValueError(f"no metrics for run {args.run_id!r}" + (f" stage {args.stage!r}" if args.stage else ""))
    _emit(args, points, ["stage", "step", "name", "value"], [[p.stage, p.step, p.name, p.value] for p in points])
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tasks.lineage import LineageStore

    with LineageStore(args.db, read_only=True) as store:
        events = store.export_openlineage(args.run_id, namespace=args.namespace)
    _emit(args, events, ["eventType", "eventTime", "job", "runId", "inputs", "outputs"],
          [[e["eventType"], e["eventTime"], e["job"]["name"], e["run"]["runId"], len(e["inputs"]),
            len(e["outputs"])] for e in events])
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
    parser = subparsers.add_parser("lineage", help="query the lineage store (read-only)",
                                   description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="lineage_command", required=True)

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--db", default=default_db(),
                         help=f"lineage DuckDB file (default: ${DB_ENV} or {DEFAULT_DB}; now %(default)s)")
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
        sub.set_defaults(func=_guarded(func))
        return sub

    for name, func, help_text in (("ancestors", cmd_ancestors, "what an artifact was made from, back to sources"),
                                  ("descendants", cmd_descendants, "everything made from an artifact")):
        sub = add(name, func, help_text)
        sub.add_argument("id_or_uri", metavar="ID_OR_URI", help="artifact id or URI")
        sub.add_argument("--max-depth", type=int, default=10_000, help="levels to walk (default %(default)s)")
    sub = add("mix", cmd_mix, "planned vs realized data mix of a stage")
    sub.add_argument("--stage", required=True, help="stage name (stage1 ... sft)")
    sub.add_argument("--run", default=None, help="run id (default: the latest run that recorded the stage)")
    sub = add("metrics", cmd_metrics, "metrics of a run")
    sub.add_argument("run_id", metavar="RUN_ID")
    sub.add_argument("--stage", default=None)
    sub.add_argument("--name", default=None)
    sub = add("export", cmd_export, "a run as OpenLineage RunEvents")
    sub.add_argument("run_id", metavar="RUN_ID")
    sub.add_argument("--namespace", default="keye", help="OpenLineage job namespace (default %(default)s)")
