"""``keye lineage`` subcommands through argparse, on a real lineage DuckDB file in a run folder."""

from __future__ import annotations

import argparse
import datetime as dt
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
TOP = "66666666-6666-6666-6666-666666666666"
T0 = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)
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
        store.record_runs(
            [
                Run(
                    run_id=TOP,
                    flow_name="keye",
                    run_name="tangerine-bear",
                    root_run_id=TOP,
                    started_at=T0,
                    ended_at=T0 + dt.timedelta(minutes=9),
                    status="COMPLETED",
                ),
                Run(
                    run_id=RUN,
                    flow_name="curate",
                    run_name="olive-owl",
                    parent_run_id=TOP,
                    root_run_id=TOP,
                    started_at=T0 + dt.timedelta(seconds=5),
                ),
            ]
        )
        store.record_artifacts([SRC, REC, SHARD])
        store.record_edges(
            [
                Edge(parent_id=SRC.artifact_id, child_id=REC.artifact_id, run_id=RUN),
                Edge(parent_id=REC.artifact_id, child_id=SHARD.artifact_id, run_id=RUN),
            ]
        )
        store.record_mix(
            [
                MixRow(
                    run_id=RUN,
                    mix="image_text",
                    source="easy-vqa",
                    modality="image",
                    planned_ratio=0.7,
                    realized_ratio_samples=0.65,
                    realized_ratio_tokens=0.6,
                    num_samples=65,
                    num_tokens=600,
                )
            ]
        )
        store.record_metrics([Metric(run_id=RUN, stage="stage1", step=10, name="loss", value=1.5)])
    return path


def test_ancestors_table_and_json(db, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # wide enough that nothing is cut
    assert run_cli(["lineage", "ancestors", SHARD.uri, "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert f"2 ancestors of {SHARD.artifact_id}" in out
    lines = out.splitlines()
    assert lines[1].split() == ["depth", "kind", "artifact_id", "uri", "records", "via"]
    assert lines[3].split()[:3] == ["1", "record", REC.artifact_id]
    assert lines[4].split()[:4] == ["2", "source", SRC.artifact_id, SRC.uri]

    assert run_cli(["lineage", "ancestors", SHARD.artifact_id, "--db", str(db), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [(n["artifact_id"], n["depth"]) for n in payload["ancestors"]] == [
        (REC.artifact_id, 1),
        (SRC.artifact_id, 2),
    ]


def test_descendants(db, capsys):
    assert run_cli(["lineage", "descendants", SRC.uri, "--db", str(db), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [n["artifact_id"] for n in payload["descendants"]] == [REC.artifact_id, SHARD.artifact_id]


def test_mix_by_name_or_by_stage_from_the_run_folder_in_env(db, capsys, monkeypatch):
    monkeypatch.setenv(cli.RUN_DIR_ENV, str(db.parent))  # the fixture's file is <run dir>/lineage.duckdb
    assert run_cli(["lineage", "mix", "--mix", "image_text"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"mix image_text, run {RUN} (mix totals)" and "share of TOKENS" in out[1]
    assert out[2].split() == [
        "source",
        "modality",
        "planned(tok)",
        "realized(tok)",
        "drift(tok)",
        "realized(smp)",
        "samples",
        "tokens",
    ]
    assert out[-1].split() == ["easy-vqa", "image", "0.7000", "0.6000", "-0.1000", "0.6500", "65", "600"]
    # a training stage resolves to the mix it trains on (the tiny preset's stage1 trains on image_text)
    assert run_cli(["lineage", "mix", "--stage", "stage1"]) == 0
    by_stage = capsys.readouterr().out.splitlines()
    assert by_stage[0] == f"mix image_text (the mix of stage stage1), run {RUN} (mix totals)"
    assert by_stage[2:] == out[2:]
    assert run_cli(["lineage", "mix", "--mix", "image_text", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lines"][0]["planned_ratio"] == 0.7
    with pytest.raises(ValueError, match="no stage 'nonesuch'"):
        run_cli(["lineage", "mix", "--stage", "nonesuch"])
    with pytest.raises(SystemExit):  # one of --mix / --stage, not both
        run_cli(["lineage", "mix", "--mix", "image_text", "--stage", "stage1"])


def test_db_defaults_to_runs_demo_and_run_dir_picks_another_folder(db, tmp_path, monkeypatch):
    monkeypatch.delenv(cli.RUN_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="runs/demo/lineage.duckdb"):
        run_cli(["lineage", "runs"])
    assert run_cli(["lineage", "runs", "--run-dir", str(db.parent)]) == 0
    assert run_cli(["lineage", "runs", "--db", str(db)]) == 0


def test_runs_lists_the_top_level_run_then_its_subflows(db, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    assert run_cli(["lineage", "runs", "--db", str(db), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["flow_name"], r["run_name"], r["status"]) for r in runs] == [
        (TOP, "keye", "tangerine-bear", "COMPLETED"),
        (RUN, "curate", "olive-owl", "RUNNING"),
    ]
    assert runs[0]["ended_at"] == (T0 + dt.timedelta(minutes=9)).isoformat() and runs[1]["parent_run_id"] == TOP
    assert run_cli(["lineage", "runs", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["run_id", "flow", "name", "status", "started", "ended"]
    assert lines[3].split() == [
        TOP,
        "keye",
        "tangerine-bear",
        "COMPLETED",
        "2025-01-01T12:00:00Z",
        "2025-01-01T12:09:00Z",
    ]
    assert lines[4].split() == [RUN, "curate", "olive-owl", "RUNNING", "2025-01-01T12:00:05Z", "-"]
    assert lines[4][len(RUN) + 2 :].startswith("  curate")  # a subflow, indented under its top-level run


def test_tables_fit_the_terminal_and_json_keeps_everything(tmp_path, capsys, monkeypatch):
    deep = Artifact(
        kind="shard",
        uri="file:///" + "/".join(["a-rather-long-folder-name"] * 12) + "/mix-000007.tar",
        created_by_run=RUN,
    )
    path = tmp_path / "lineage.duckdb"
    with LineageStore(path) as store:
        store.record_artifacts([SRC, deep])
        store.record_edges([Edge(parent_id=SRC.artifact_id, child_id=deep.artifact_id, run_id=RUN)])
    monkeypatch.setenv("COLUMNS", "100")
    assert run_cli(["lineage", "descendants", SRC.uri, "--db", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(deep.uri) > 300 and all(len(line) <= 100 for line in lines), [len(line) for line in lines]
    row = lines[3].split()
    assert row[:2] == ["1", "shard"] and "..." in row[3] and row[3].startswith("file:///a-r")
    assert row[3].endswith("00007.tar")  # the middle goes, the file name stays
    assert run_cli(["lineage", "descendants", SRC.uri, "--db", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["descendants"][0]["uri"] == deep.uri


def test_cut_middle_and_table_fitting():
    assert cli.cut_middle("file:///runs/demo/shards/x-000001.tar", 20) == "file:///...00001.tar"
    assert cli.cut_middle("short", 20) == "short"
    table = cli.format_table(["a", "b", "c"], [["x" * 10, "y" * 40, "z" * 30]], max_width=60, cut=["b"])
    assert [len(line) for line in table.splitlines()] == [31, 60, 60]  # the header line is right-stripped
    assert table.splitlines()[2].split()[1] == "y" * 6 + "..." + "y" * 7


def test_export_and_metrics(db, capsys):
    assert run_cli(["lineage", "export", RUN, "--db", str(db), "--json"]) == 0
    events = json.loads(capsys.readouterr().out)
    assert [e["eventType"] for e in events] == ["START"]
    assert events[0]["run"]["runId"] == RUN and events[0]["job"] == {
        "namespace": "keye",
        "name": "curate",
        "facets": events[0]["job"]["facets"],
    }
    assert [d["name"] for d in events[0]["inputs"]] == ["/data/easy-vqa"]
    assert run_cli(["lineage", "export", RUN, "--db", str(db)]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[0] == "START"
    assert run_cli(["lineage", "metrics", RUN, "--db", str(db)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split() == ["stage1", "10", "loss", "1.5000"]


def test_user_errors_raise_for_main_to_report(db, tmp_path):
    with pytest.raises(ValueError, match="no artifact with id or uri 'file:///nope'"):
        run_cli(["lineage", "ancestors", "file:///nope", "--db", str(db)])
    with pytest.raises(FileNotFoundError, match="missing.duckdb"):
        run_cli(["lineage", "mix", "--mix", "image_text", "--db", str(tmp_path / "missing.duckdb")])


HOLDER = """
import sys
from tasks.lineage import LineageStore
with LineageStore(sys.argv[1]) as store:
    print("ready", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.slow
def test_locked_store_exits_2_with_a_clear_message(db, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)],
        cwd=ROOT,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert run_cli(["lineage", "mix", "--mix", "image_text", "--db", str(db)]) == 2
    finally:
        holder.communicate("done\n", timeout=60)
    err = capsys.readouterr().err
    assert err.startswith("keye lineage mix: error: lineage store") and f"process {holder.pid}" in err
    assert run_cli(["lineage", "mix", "--mix", "image_text", "--db", str(db)]) == 0  # works once released
