"""A pipeline run without ``run_dir`` (what ``prefect deployment run keye/full-pipeline`` does now) gets its
own folder ``runs/<flow run name>``, and the top-level run the UI opens carries the summary artifact;
every artifact key of the run ends with its folder's slug. One tiny stage keeps it short."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.reports import artifact_key, run_slug

pytestmark = pytest.mark.slow


def test_a_run_without_run_dir_gets_its_own_folder_and_a_summary(prefect_harness, tmp_path, monkeypatch):
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    from flows.keye import keye

    monkeypatch.chdir(tmp_path)  # runs/<name> is relative to where the flow runs (the checkout, for a worker)
    state = keye(stages=["stage1"], records_per_source=4, return_state=True)
    result = state.result()
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        own = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
        )
        phases = ArtifactFilterFlowRunId(any_=[run.id for run in children])
        theirs = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=phases))
    run_dir = tmp_path / "runs" / flow_run.name
    assert Path(result["run_dir"]) == run_dir.resolve() and (run_dir / "stages" / "stage1" / "result.json").is_file()
    (summary,) = [a for a in own if a.key == artifact_key("summary", run_dir)]
    assert "| stage1 |" in summary.data and result["checkpoints"]["stage1"] in summary.data
    assert f"/artifacts/key/{artifact_key('stage-stage1', run_dir)}" in summary.data
    keys = {a.key for a in theirs if a.key}
    assert artifact_key("mix-annealing", run_dir) in keys and artifact_key("stage-stage1", run_dir) in keys, keys
    slug = run_slug(run_dir)
    assert all(key.endswith(slug) for key in keys if not key.startswith("progress-")), keys
