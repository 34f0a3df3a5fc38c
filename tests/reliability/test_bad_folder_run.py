"""The bad-input folder of ``test_bad_inputs`` through the whole pipeline, as ``keye run --local-folder DIR
--stages stage1`` runs it (the ``keye`` flow under a Prefect test server): the run completes and trains,
the folder's good items are curated, and every bad item is in the run's quarantine file with a reason
naming it. The sources table and the lineage count what a limit left unread (none here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.layout import RunLayout
from tasks.lineage import LineageStore
from tasks.reports import artifact_key
from tests.reliability import test_bad_inputs
from tests.reliability.test_bad_inputs import item_of

pytestmark = pytest.mark.slow
#: The bad-input folder: test_bad_inputs' module-scoped fixture, under this name here.
bad_input_folder = test_bad_inputs.folder

BAD = test_bad_inputs.EXPECTED_QUARANTINE


@pytest.fixture(scope="module")
def harness():
    """A Prefect test server for this module (as ``tests/flows``' session harness, which is out of reach here)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def run(harness, bad_input_folder, tmp_path_factory):
    from flows.keye import keye

    root, _, _ = bad_input_folder
    run_dir = tmp_path_factory.mktemp("bad-folder-run")
    state = keye(
        run_dir=str(run_dir), local_folder=str(root), stages=["stage1"], records_per_source=4, return_state=True
    )
    return run_dir, state


def test_the_run_completes_and_trains(run):
    run_dir, state = run
    assert state.is_completed(), state
    result = state.result()
    assert Path(result["checkpoints"]["stage1"], "model.safetensors").is_file()
    assert (Path(run_dir) / "stages" / "stage1" / "result.json").is_file()


def test_the_folders_good_items_are_curated(run, bad_input_folder):
    run_dir, _ = run
    _, _, good = bad_input_folder
    records = [json.loads(line) for line in Path(RunLayout(str(run_dir)).records_path).read_text().splitlines()]
    assert {item_of(r) for r in records if r["source"] == "local-folder"} == good


def test_every_bad_item_is_in_the_quarantine_file_with_a_reason_naming_it(run, bad_input_folder):
    run_dir, _ = run
    root, _, _ = bad_input_folder
    lines = [json.loads(line) for line in Path(RunLayout(str(run_dir)).quarantine_path).read_text().splitlines()]
    found = {}
    for line in lines:
        if line["source"] != "local-folder":
            continue
        item = item_of(line["record"]) if line["record"] else Path(line["id"]).relative_to(root).as_posix()
        assert item not in found, f"{item} quarantined twice"
        found[item] = line["reasons"]
        media = line["record"] and line["record"]["media_path"]
        name = Path(media).name if media else item
        assert any(name in problem["detail"] for problem in line["problems"]), line
    assert found == BAD


def test_the_sources_table_and_lineage_count_what_a_limit_left_unread(run, bad_input_folder):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    run_dir, _ = run
    _, _, good = bad_input_folder
    key = artifact_key("sources", run_dir)
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    data = artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)
    rows = {row["source"]: row for row in data}
    assert rows["local-folder"]["records_dropped"] == 0  # a user's folder is read whole without its own limit
    assert rows["local-folder"]["records_passed"] == len(good)
    assert rows["local-folder"]["inputs_rejected"] + rows["local-folder"]["records_quarantined"] == len(BAD)
    with LineageStore(RunLayout(str(run_dir)).lineage_db, read_only=True) as store:
        names = dict(store.con.execute("select name, value from metrics where stage = 'curate'").fetchall())
    assert names["records_dropped"] == 0 and names["records_dropped/local-folder"] == 0
