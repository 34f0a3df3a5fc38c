"""``keye lineage`` subcommands through argparse, on a real lineage DuckDB file."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keye_cli import lineage as cli
from tasks.lineage import Artifact, Edge, LineageStore, Metric, MixRow, Run

ROOT = Path(__file__).resolve().parents[1]
RUN = "55555555-5555-5555-5555-555555555555"
SRC = Artifact(kind="source", uri="file:///data/easy-vqa")
REC = Artifact(kind="record", uri="record://easy-vqa/q1", created_by_run=RUN)
SHARD = Artifact(kind="shard", uri="file:///runs/s-000.tar", sha256="f" * 64, num_records=1, created_by_run=RUN)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="keye")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "lineage.duckdb"
    with LineageStore(path) as store:
        store.record_run(Run(run_id=RUN, flow_name="curate"))
        store.record_artifacts([SRC, REC, SHARD])
        store.record_edges([Edge(parent_id=SRC.artifact_id, child_id=REC.artifact_id, run_id=RUN),
                            Edge(parent_id=REC.artifact_id, child_id=SHARD.artifact_id, run_id=RUN)])
        store.record_mix([MixRow(run_id=RUN, stage="stage1", source="easy-vqa", modality="image", planned_ratio=0.7,
                                 realized_ratio_samples=0.65, realized_ratio_tokens=0.6, num_samples=65,
                                 num_tokens=600)])
        store.record_metrics([Metric(run_id=RUN, stage="stage1", step=10, name="loss", value=1.5)])
    return path


def test_ancestors_table_and_json(db, capsys):
    assert run_cli(["lineage", "ancestors", SHARD.uri, "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert f"2 ancestors of {SHARD.artifact_id}" in out
    lines = out.splitlines()
    assert lines[1].split() == ["depth", "kind", "artifact_id", "uri", "records", "via"]
    assert lines[3].split()[:3] == ["1", "record", REC.artifact_id]
    assert lines[4].split()[:4] == ["2", "source", SRC.artifact_id, SRC.uri]

    assert run_cli(["lineage", "ancestors", SHARD.artifact_id, "--db", str(db), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [(n["artifact_id"], n["depth"]) for n in payload["ancestors"]] == [(REC.artifact_id, 1), (SRC.artifact_id, 2)]


def test_descendants(db, capsys):
    assert run_cli(["lineage", "descendants", SRC.uri, "--db", str(db), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [n["artifact_id"] for n in payload["descendants"]] == [REC.artifact_id, SHARD.artifact_id]


def test_mix_uses_env_default_db(db, capsys, monkeypatch):
    monkeypatch.setenv(cli.DB_ENV, str(db))
    assert run_cli(["lineage", "mix", "--stage", "stage1"]) == 0
    out = capsys.readouterr().out
    assert f"stage stage1, run {RUN} (stage totals)" in out
    assert out.splitlines()[-1].split() == ["easy-vqa", "image", "0.7000", "0.6500", "0.6000", "-0.0500", "65", "600"]
    assert run_cli(["lineage", "mix", "--stage", "stage1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lines"][0]["planned_ratio"] == 0.7


def test_export_and_metrics(db, capsys):
    assert run_cli(["lineage", "export", RUN, "--db", str(db), "--json"]) == 0
    events = json.loads(capsys.readouterr().out)
    assert [e["eventType"] for e in events] == ["START"]
    assert events[0]["run"]["runId"] == RUN and events[0]["job"] == {
        "namespace": "keye", "name": "curate", "facets": events[0]["job"]["facets"]}
    assert [d["name"] for d in events[0]["inputs"]] == ["/data/easy-vqa"]
    assert run_cli(["lineage", "export", RUN, "--db", str(db)]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[0] == "START"
    assert run_cli(["lineage", "metrics", RUN, "--db", str(db)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split() == ["stage1", "10", "loss", "1.5000"]


def test_user_errors_raise_for_main_to_report(db, tmp_path):
    with pytest.raises(ValueError, match="no artifact with id or uri 'file:///nope'"):
        run_cli(["lineage", "ancestors", "file:///nope", "--db", str(db)])
    with pytest.raises(FileNotFoundError, match="missing.duckdb"):
        run_cli(["lineage", "mix", "--stage", "stage1", "--db", str(tmp_path / "missing.duckdb")])


HOLDER = """
import sys
from tasks.lineage import LineageStore
with LineageStore(sys.argv[1]) as store:
    print("ready", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.slow
def test_locked_store_exits_2_with_a_clear_message(db, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], cwd=ROOT, text=True, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert run_cli(["lineage", "mix", "--stage", "stage1", "--db", str(db)]) == 2
    finally:
        holder.communicate("done\n", timeout=60)
    err = capsys.readouterr().err
    assert err.startswith("keye lineage mix: error: lineage store") and f"process {holder.pid}" in err
    assert run_cli(["lineage", "mix", "--stage", "stage1", "--db", str(db)]) == 0  # works once released
