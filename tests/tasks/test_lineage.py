"""The lineage store on a real DuckDB file: schema, ancestry, idempotency, mix, metrics, reviews,
OpenLineage export, and the lock held by a second real process."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from tasks.lineage import (
    Artifact,
    Edge,
    LineageLockedError,
    LineageStore,
    Metric,
    MixRow,
    Review,
    Run,
    TaskRun,
    artifact_id,
)
from tasks.lineage.schema import TABLES
from tasks.lineage.store import STORAGE_NUMBER, STORAGE_VERSION, storage_number

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)
CURATE = "11111111-1111-1111-1111-111111111111"
PRETRAIN = "22222222-2222-2222-2222-222222222222"
PARENT = "33333333-3333-3333-3333-333333333333"


def graph() -> dict[str, list]:
    """Two sources -> three records -> two datasets (diamond over rec_a2, rec_b1) -> shard -> checkpoint."""
    src_a = Artifact(kind="source", uri="file:///data/easy-vqa", sha256="a" * 64)
    src_b = Artifact(kind="source", uri="file:///data/skimage")
    recs = [
        Artifact(kind="record", uri=f"record://{s}/{i}", num_records=1, created_by_run=CURATE)
        for s, i in (("easy-vqa", "q1"), ("easy-vqa", "q2"), ("skimage", "astronaut"))
    ]
    ds_vqa = Artifact(
        kind="dataset",
        uri="file:///runs/c/vqa.parquet",
        sha256="b" * 64,
        num_records=3,
        created_by_run=CURATE,
        metadata={"task": "vqa"},
    )
    ds_cap = Artifact(
        kind="dataset", uri="file:///runs/c/caption.parquet", sha256="c" * 64, num_records=2, created_by_run=CURATE
    )
    shard = Artifact(
        kind="shard",
        uri="file:///runs/c/shards/stage1-000000.tar",
        sha256="d" * 64,
        num_bytes=10_240,
        num_records=5,
        created_by_run=CURATE,
    )
    ckpt = Artifact(kind="checkpoint", uri="file:///runs/p/stage1/step-100", created_by_run=PRETRAIN)

    def edge(parent: Artifact, child: Artifact, run: str = CURATE, relation: str = "made_from") -> Edge:
        return Edge(parent_id=parent.artifact_id, child_id=child.artifact_id, run_id=run, relation=relation)

    edges = [
        edge(src_a, recs[0]),
        edge(src_a, recs[1]),
        edge(src_b, recs[2]),
        edge(recs[0], ds_vqa),
        edge(recs[1], ds_vqa),
        edge(recs[2], ds_vqa),
        edge(recs[1], ds_cap),
        edge(recs[2], ds_cap),
        edge(ds_vqa, shard, relation="sharded_from"),
        edge(ds_cap, shard, relation="sharded_from"),
        edge(shard, ckpt, PRETRAIN, "trained_on"),
    ]
    runs = [
        Run(run_id=PARENT, flow_name="keye", started_at=T0),
        Run(
            run_id=CURATE,
            flow_name="curate",
            parameters={"preset": "tiny"},
            code_version="v0-1-gabc",
            started_at=T0,
            parent_run_id=PARENT,
        ),
        Run(run_id=PRETRAIN, flow_name="pretrain", started_at=T0 + dt.timedelta(hours=1), parent_run_id=PARENT),
    ]
    task_runs = [
        TaskRun(
            task_run_id="t-validate",
            run_id=CURATE,
            name="validate_records",
            status="COMPLETED",
            started_at=T0,
            ended_at=T0 + dt.timedelta(minutes=1),
        )
    ]
    artifacts = [src_a, src_b, *recs, ds_vqa, ds_cap, shard, ckpt]
    return {
        "runs": runs,
        "task_runs": task_runs,
        "artifacts": artifacts,
        "edges": edges,
        "named": {
            "src_a": src_a,
            "src_b": src_b,
            "recs": recs,
            "ds_vqa": ds_vqa,
            "ds_cap": ds_cap,
            "shard": shard,
            "ckpt": ckpt,
        },
    }


def mix_rows(run_id: str, mix: str, scale: float = 1.0) -> list[MixRow]:
    shard = graph()["named"]["shard"].artifact_id
    rows = []
    for shard_id in (None, shard):
        rows += [
            MixRow(
                run_id=run_id,
                mix=mix,
                shard_id=shard_id,
                source="easy-vqa",
                modality="image",
                planned_ratio=0.6,
                realized_ratio_samples=0.5 * scale,
                realized_ratio_tokens=0.55,
                num_samples=50,
                num_tokens=5500,
            ),
            MixRow(
                run_id=run_id,
                mix=mix,
                shard_id=shard_id,
                source="skimage",
                modality="image",
                planned_ratio=0.4,
                realized_ratio_samples=0.5,
                realized_ratio_tokens=0.45,
                num_samples=50,
                num_tokens=4500,
            ),
        ]
    return rows


def write_all(store: LineageStore) -> None:
    g = graph()
    store.record_runs(g["runs"])
    store.record_task_runs(g["task_runs"])
    store.record_artifacts(g["artifacts"])
    store.record_edges(g["edges"])
    store.record_mix(mix_rows(CURATE, "image_text"))
    store.record_metrics(
        [Metric(run_id=PRETRAIN, stage="stage1", step=s, name="loss", value=2.0 / (s + 1)) for s in range(5)]
    )
    store.record_reviews(
        [
            Review(
                run_id=CURATE,
                reviewer="Ada Lovelace",
                decision="reject",
                sample_ids=("easy-vqa-q2",),
                note="answer wrong",
                reviewed_at=T0,
            ),
            Review(
                run_id=CURATE,
                reviewer="auto",
                decision="approve",
                sample_ids=("easy-vqa-q1", "skimage-astronaut"),
                reviewed_at=T0,
            ),
        ]
    )


def counts(store: LineageStore) -> dict[str, int]:
    return {spec.name: store.count(spec.name) for spec in TABLES}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "lineage.duckdb"
    with LineageStore(path) as store:
        write_all(store)
    return path


def test_schema_is_created_idempotently(tmp_path):
    path = tmp_path / "nested" / "lineage.duckdb"
    LineageStore(path).close()
    LineageStore(path).close()  # second create must not fail or duplicate anything
    con = duckdb.connect(str(path), read_only=True)
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    pk = con.execute(
        "SELECT constraint_column_names FROM duckdb_constraints() "
        "WHERE table_name = 'edges' AND constraint_type = 'PRIMARY KEY'"
    ).fetchone()[0]
    con.close()
    assert tables == {"runs", "task_runs", "artifacts", "edges", "data_mix", "metrics", "reviews"}
    assert sorted(pk) == ["child_id", "parent_id", "relation", "run_id"]


def test_read_only_open_rejects_missing_foreign_files_and_writes(tmp_path, db):
    with pytest.raises(FileNotFoundError, match="absent.duckdb"):
        LineageStore(tmp_path / "absent.duckdb", read_only=True)
    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).close()
    with pytest.raises(ValueError, match="not a lineage store"):
        LineageStore(other, read_only=True)
    with LineageStore(db, read_only=True) as store:
        with pytest.raises(ValueError, match="read-only"):
            store.record_metrics([Metric(run_id=CURATE, stage="s", step=0, name="x", value=1.0)])


def test_artifact_ids_are_deterministic():
    a = Artifact(kind="shard", uri="file:///s.tar", sha256="ab")
    assert (
        a.artifact_id
        == artifact_id("shard", "file:///s.tar", "ab")
        == Artifact(kind="shard", uri="file:///s.tar", sha256="ab").artifact_id
    )
    assert a.artifact_id.startswith("shard:")
    assert a.artifact_id != artifact_id("shard", "file:///s.tar", "cd")  # new content, new artifact
    with pytest.raises(ValueError, match="kind 'blob'"):
        Artifact(kind="blob", uri="file:///x")


def test_ancestry_walks_diamond_back_to_sources(db):
    n = graph()["named"]
    with LineageStore(db, read_only=True) as store:
        nodes = store.ancestors(n["shard"].uri)  # by URI
        by_id = {node.artifact_id: node for node in nodes}
        assert len(nodes) == len(by_id) == 7  # the diamond's shared records appear once
        assert {by_id[a.artifact_id].depth for a in (n["ds_vqa"], n["ds_cap"])} == {1}
        assert {by_id[a.artifact_id].depth for a in n["recs"]} == {2}
        assert by_id[n["src_a"].artifact_id].depth == by_id[n["src_b"].artifact_id].depth == 3
        assert by_id[n["recs"][1].artifact_id].via == tuple(sorted((n["ds_cap"].artifact_id, n["ds_vqa"].artifact_id)))
        assert by_id[n["ds_vqa"].artifact_id].relations == ("sharded_from",)
        assert [node.depth for node in nodes] == sorted(node.depth for node in nodes)

        from_ckpt = store.ancestors(n["ckpt"].artifact_id)
        assert max(node.depth for node in from_ckpt) == 4 and len(from_ckpt) == 8
        assert len(store.ancestors(n["ckpt"].artifact_id, max_depth=2)) == 3  # shard + 2 datasets
        assert store.ancestors(n["src_a"].artifact_id) == []

        below = {node.artifact_id: node.depth for node in store.descendants(n["src_b"].uri)}
        assert below == {
            n["recs"][2].artifact_id: 1,
            n["ds_vqa"].artifact_id: 2,
            n["ds_cap"].artifact_id: 2,
            n["shard"].artifact_id: 3,
            n["ckpt"].artifact_id: 4,
        }
        with pytest.raises(ValueError, match="no artifact with id or uri 'file:///nope'"):
            store.ancestors("file:///nope")


def test_same_writes_twice_add_no_rows(db):
    with LineageStore(db) as store:
        before = counts(store)
        write_all(store)
        assert counts(store) == before
    assert before == {"runs": 3, "task_runs": 1, "artifacts": 9, "edges": 11, "data_mix": 4, "metrics": 5, "reviews": 2}


def test_duplicates_inside_one_batch_collapse(tmp_path):
    src = Artifact(kind="source", uri="file:///s")
    with LineageStore(tmp_path / "l.duckdb") as store:
        assert store.record_artifacts([src, src, src]) == 1
        store.record_metrics([Metric(run_id="r", stage="s", step=1, name="loss", value=v) for v in (3.0, 2.0)])
        assert [m.value for m in store.metrics("r")] == [2.0]  # last write in the batch wins


def test_run_updates_fill_end_and_keep_first_start(db):
    with LineageStore(db) as store:
        run = graph()["runs"][1]
        end = T0 + dt.timedelta(hours=2)
        store.record_run(
            dataclasses.replace(run, started_at=T0 + dt.timedelta(minutes=5), ended_at=end, status="COMPLETED")
        )
        row = store.con.execute(
            "SELECT started_at, ended_at, status, parameters->>'$.preset' FROM runs WHERE run_id = ?", [CURATE]
        ).fetchone()
    assert row == (T0, end, "COMPLETED", "tiny")


def test_bulk_dataframes_match_dataclasses(tmp_path):
    frame = pd.DataFrame(
        {
            "kind": ["source", "dataset"],
            "uri": ["file:///s", "file:///d"],
            "sha256": [None, "ee"],
            "num_records": [None, 7],
            "created_by_run": [None, "r"],
            "metadata": [{}, {"split": "train"}],
            "created_at": [T0, T0],
        }
    )
    with LineageStore(tmp_path / "l.duckdb") as store:
        assert store.record_artifacts(frame) == 2
        assert store.record_artifacts([Artifact(kind="dataset", uri="file:///d", sha256="ee")]) == 0
        ids = {r[0] for r in store.con.execute("SELECT artifact_id FROM artifacts").fetchall()}
        assert ids == {artifact_id("source", "file:///s"), artifact_id("dataset", "file:///d", "ee")}
        meta = store.con.execute("SELECT metadata->>'$.split' FROM artifacts WHERE kind = 'dataset'").fetchone()
        assert meta == ("train",)
        with pytest.raises(ValueError, match="kind .blob. not in"):
            store.record_artifacts(pd.DataFrame({"kind": ["blob"], "uri": ["file:///b"]}))
        with pytest.raises(ValueError, match="column status has values \\['DONE'\\]"):
            store.record_runs(pd.DataFrame({"run_id": ["r"], "flow_name": ["f"], "status": ["DONE"]}))
        with pytest.raises(ValueError, match="lacks key columns \\['step'\\]"):
            store.record_metrics(pd.DataFrame({"run_id": ["r"], "stage": ["s"], "name": ["x"], "value": [1.0]}))


def test_mix_planned_vs_realized(db):
    later = "44444444-4444-4444-4444-444444444444"
    with LineageStore(db) as store:
        report = store.mix("image_text")
        assert (report.run_id, report.from_shards) == (CURATE, False)
        assert [(m.source, m.planned_ratio, m.realized_ratio_samples) for m in report.lines] == [
            ("easy-vqa", 0.6, 0.5),
            ("skimage", 0.4, 0.5),
        ]
        assert report.mix == "image_text"
        assert report.lines[0].drift_tokens == pytest.approx(0.55 - 0.6)  # the plan is a share of tokens
        # Re-recording replaces the rows, NULL shard ids included, instead of adding new ones.
        store.record_mix(mix_rows(CURATE, "image_text", scale=0.8))
        assert store.count("data_mix") == 4
        assert store.mix("image_text").lines[0].realized_ratio_samples == pytest.approx(0.4)
        # Only per-shard rows: the mix total is summed from them.
        store.record_run(Run(run_id=later, flow_name="curate", started_at=T0 + dt.timedelta(days=1)))
        store.record_mix(
            [
                dataclasses.replace(r, run_id=later, shard_id=f"shard:{i}", num_samples=30 + 10 * i)
                for i, r in enumerate(x for x in mix_rows(later, "image_text") if x.shard_id is None)
            ]
        )
        latest = store.mix("image_text")
        assert (latest.run_id, latest.from_shards) == (later, True)
        assert [m.realized_ratio_samples for m in latest.lines] == pytest.approx([30 / 70, 40 / 70])
        assert store.mix("image_text", run_id=CURATE).run_id == CURATE
        with pytest.raises(ValueError, match="no data mix 'stage9' recorded; mixes recorded: \\['image_text'\\]"):
            store.mix("stage9")


def test_runs_are_listed_by_tree_newest_first(db):
    later = "55555555-5555-5555-5555-555555555555"
    with LineageStore(db) as store:
        store.record_run(
            Run(
                run_id=later,
                flow_name="keye",
                run_name="tangerine-bear",
                root_run_id=later,
                started_at=T0 + dt.timedelta(days=1),
                status="COMPLETED",
                ended_at=T0 + dt.timedelta(days=1, hours=1),
            )
        )
        runs = store.runs()
        assert [r.run_id for r in store.runs(limit=2)] == [later, PARENT]
    # the newest top-level run first; then the older tree: its root, then its subflows as they started
    assert [(r.run_id, r.flow_name) for r in runs] == [
        (later, "keye"),
        (PARENT, "keye"),
        (CURATE, "curate"),
        (PRETRAIN, "pretrain"),
    ]
    assert (runs[0].run_name, runs[0].root_run_id, runs[0].status) == ("tangerine-bear", later, "COMPLETED")
    assert runs[2].parent_run_id == PARENT and runs[2].run_name is None


def test_the_file_is_in_a_storage_format_duckdb_1x_reads(db):
    # DuckDB 1.5 readers open header versions 64..68, 1.4 readers 64..67 (their "can only read versions
    # between" errors); 2.x writes larger numbers unless told otherwise.
    assert storage_number(db) == STORAGE_NUMBER <= 67
    con = duckdb.connect(str(db), read_only=True)
    tags = con.execute("SELECT tags FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
    con.close()
    assert tags[0]["storage_version"] == f"{STORAGE_VERSION}+"


OLD_RUNS = """CREATE TABLE runs (run_id VARCHAR PRIMARY KEY, flow_name VARCHAR NOT NULL, parameters JSON,
    code_version VARCHAR, started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ, status VARCHAR NOT NULL,
    parent_run_id VARCHAR)"""
OLD_MIX = """CREATE TABLE data_mix (run_id VARCHAR NOT NULL, stage VARCHAR NOT NULL, shard_id VARCHAR,
    source VARCHAR NOT NULL, modality VARCHAR NOT NULL, planned_ratio DOUBLE, realized_ratio_samples DOUBLE,
    realized_ratio_tokens DOUBLE, num_samples BIGINT, num_tokens BIGINT)"""


def test_a_file_from_before_is_rewritten_readable_and_upgraded(tmp_path):
    """A file written by DuckDB 2's default format with the old columns (data_mix.stage, no run_name):
    the writer converts it to the 1.x format once, keeping every row, and renames/adds the columns."""
    path = tmp_path / "lineage.duckdb"
    con = duckdb.connect(str(path))
    con.execute(OLD_RUNS)
    con.execute(OLD_MIX)
    con.execute("INSERT INTO runs VALUES (?, 'curate', '{}', NULL, ?, NULL, 'RUNNING', NULL)", [CURATE, T0])
    con.execute("INSERT INTO data_mix VALUES (?, 'alignment', NULL, '*', 'image', 1.0, 1.0, 1.0, 3, 30)", [CURATE])
    con.close()
    assert storage_number(path) > STORAGE_NUMBER  # what DuckDB 2 writes by default: 1.x cannot open it
    with LineageStore(path) as store:
        store.record_run(Run(run_id=PARENT, flow_name="keye", run_name="tangerine-bear", started_at=T0))
        assert store.mix("alignment").lines[0].num_tokens == 30
        assert {r.run_id for r in store.runs()} == {CURATE, PARENT}
    assert storage_number(path) == STORAGE_NUMBER
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lineage.duckdb"]  # no partial copy, no stale WAL
    with LineageStore(path, read_only=True) as store:
        assert [r.run_name for r in store.runs() if r.run_id == PARENT] == ["tangerine-bear"]


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("KEYE_DUCKDB1_PYTHON"),
    reason="set KEYE_DUCKDB1_PYTHON to a python with duckdb 1.x installed (a separate venv)",
)
def test_a_real_duckdb_1x_client_reads_the_file(db):
    script = (
        "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True); "
        "print(duckdb.__version__, con.execute('SELECT count(*) FROM edges').fetchone()[0])"
    )
    out = subprocess.run(
        [os.environ["KEYE_DUCKDB1_PYTHON"], "-c", script, str(db)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    version, edges = out.stdout.split()
    assert version.startswith("1.") and edges == "11"


def test_metrics_upsert_and_filter(db):
    with LineageStore(db) as store:
        store.record_metrics(
            [
                Metric(run_id=PRETRAIN, stage="stage1", step=0, name="loss", value=9.0),
                Metric(run_id=PRETRAIN, stage="eval", step=0, name="acc/vqa", value=0.25),
            ]
        )
        loss = store.metrics(PRETRAIN, stage="stage1", name="loss")
        assert [(m.step, m.value) for m in loss] == [(0, 9.0), (1, 1.0), (2, 2 / 3), (3, 0.5), (4, 0.4)]
        assert [m.name for m in store.metrics(PRETRAIN, stage="eval")] == ["acc/vqa"]
        assert len(store.metrics(PRETRAIN)) == 6 and store.metrics(CURATE) == []


def test_reviews_round_trip(db):
    with LineageStore(db, read_only=True) as store:
        reviews = store.reviews(CURATE)
    assert [(r.reviewer, r.decision, r.sample_ids) for r in reviews] == [
        ("Ada Lovelace", "reject", ("easy-vqa-q2",)),
        ("auto", "approve", ("easy-vqa-q1", "skimage-astronaut")),
    ]
    assert reviews[0].note == "answer wrong" and reviews[0].reviewed_at == T0
    assert reviews[0].review_id == graph_review_id()
    with pytest.raises(ValueError, match="decision 'maybe'"):
        Review(run_id=CURATE, reviewer="auto", decision="maybe", sample_ids=())


def graph_review_id() -> str:
    return Review(
        run_id=CURATE,
        reviewer="Ada Lovelace",
        decision="reject",
        sample_ids=("easy-vqa-q2",),
        note="answer wrong",
        reviewed_at=T0,
    ).review_id


def test_openlineage_export_shape(db):
    end = T0 + dt.timedelta(hours=1)
    with LineageStore(db) as store:
        store.record_run(dataclasses.replace(graph()["runs"][1], status="FAILED", ended_at=end))
        events = store.export_openlineage(CURATE)
        pretrain = store.export_openlineage(PRETRAIN)
        with pytest.raises(ValueError, match="no run 'nope'"):
            store.export_openlineage("nope")
    flow_events = [e for e in events if e["job"]["name"] == "curate"]
    assert [e["eventType"] for e in flow_events] == ["START", "FAIL"]
    for event in events:
        assert set(event) == {"eventType", "eventTime", "run", "job", "inputs", "outputs", "producer", "schemaURL"}
        assert event["schemaURL"].endswith("OpenLineage.json#/$defs/RunEvent")
        uuid.UUID(event["run"]["runId"])
        dt.datetime.fromisoformat(event["eventTime"])
        assert set(event["job"]) >= {"namespace", "name"} and event["job"]["namespace"] == "keye"
    start, fail = flow_events
    assert start["run"]["runId"] == CURATE and fail["eventTime"] == end.isoformat()
    parent = start["run"]["facets"]["parent"]
    assert parent["run"]["runId"] == PARENT and parent["job"] == {"namespace": "keye", "name": "keye"}
    assert start["run"]["facets"]["keye_run"]["parameters"] == {"preset": "tiny"}
    # Inputs: the sources its edges read; outputs: datasets and shard it made; records left out.
    assert {(d["namespace"], d["name"]) for d in fail["inputs"]} == {
        ("file", "/data/easy-vqa"),
        ("file", "/data/skimage"),
    }
    assert sorted(d["name"] for d in fail["outputs"]) == [
        "/runs/c/caption.parquet",
        "/runs/c/shards/stage1-000000.tar",
        "/runs/c/vqa.parquet",
    ]
    shard = next(d for d in fail["outputs"] if d["name"].endswith(".tar"))
    assert shard["facets"]["version"]["datasetVersion"] == "d" * 64
    assert shard["outputFacets"]["outputStatistics"]["rowCount"] == 5
    assert all({"_producer", "_schemaURL"} <= set(f) for d in fail["outputs"] for f in d["facets"].values())
    task = [e for e in events if e["job"]["name"] == "curate.validate_records"]
    assert [e["eventType"] for e in task] == ["START", "COMPLETE"]
    assert task[0]["run"]["facets"]["parent"]["run"]["runId"] == CURATE
    # Still running: only START; its input is the shard made by another run.
    assert [e["eventType"] for e in pretrain] == ["START"]
    assert [d["name"] for d in pretrain[0]["inputs"]] == ["/runs/c/shards/stage1-000000.tar"]


def test_threads_of_the_writer_share_one_store(tmp_path):
    with LineageStore(tmp_path / "l.duckdb") as store:

        def work(worker: int) -> None:
            for step in range(20):
                store.record_metrics([Metric(run_id="r", stage=f"w{worker}", step=step, name="loss", value=1.0)])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.count("metrics") == 80


HOLDER = """
import sys
from tasks.lineage import LineageStore
with LineageStore(sys.argv[1]) as store:
    print("ready", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.slow
def test_second_process_holding_the_file_gives_lineage_locked_error(db):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)],
        cwd=ROOT,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "ready", holder.stderr.read()
        for read_only in (False, True):
            with pytest.raises(LineageLockedError) as info:
                LineageStore(db, read_only=read_only)
            assert info.value.holder_pid == holder.pid
            message = str(info.value)
            assert str(db) in message and f"process {holder.pid}" in message and "one writer" in message
    finally:
        holder.communicate("done\n", timeout=60)
    assert holder.returncode == 0
    with LineageStore(db, read_only=True) as store:  # untouched and readable once released
        assert counts(store)["edges"] == 11


def test_run_identity_outside_a_flow(tmp_path):
    from tasks.lineage.prefect_tasks import code_version, current_run

    assert code_version(ROOT)
    with pytest.raises(ValueError, match="outside a Prefect flow run"):
        current_run()


def test_a_local_path_in_any_form_names_its_artifact(tmp_path, monkeypatch):
    checkpoint = tmp_path / "stages" / "sft" / "checkpoint"
    checkpoint.mkdir(parents=True)
    with LineageStore(tmp_path / "lineage.duckdb") as store:
        store.record_artifacts([Artifact(kind="checkpoint", uri=str(checkpoint.resolve()))])
        wanted = store.resolve(str(checkpoint.resolve()))
        monkeypatch.chdir(tmp_path)
        assert store.resolve("stages/sft/checkpoint") == wanted
        assert store.resolve("./stages/sft/../sft/checkpoint") == wanted
