"""A stage resumes only from DeepSpeed checkpoints its runner wrote: tampered, planted or escaping ones are refused.

One real stage (tiny preset, real DeepSpeed engine) is stopped after its first checkpoint; each test copies
its folder, changes one thing, and resumes. The planted pickle would create a file when unpickled: the
refusal must come before DeepSpeed's ``torch.load(weights_only=False)`` ever reads it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from data_specs.presets import get_stage
from keye_model.training.checkpoint_manifest import UntrustedCheckpointError, latest_tag, manifest_path, verify
from keye_model.training.runner import RunConfig, run_stage

pytestmark = pytest.mark.slow


class _Planted:
    """Unpickling this runs ``os.system``: what an attacker would put in a checkpoint file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, tokenizer_dir, shards):
    """A stage stopped after step 2 with its checkpoint ``step2`` written through the manifest."""
    spec = dataclasses.replace(get_stage("tiny", "sft"), num_steps=3, checkpoint_every=2)
    config = RunConfig(
        stage=spec, output_dir=str(tmp_path_factory.mktemp("stopped")), tokenizer_dir=tokenizer_dir, shards=shards
    )
    run_stage(dataclasses.replace(config, stop_after_steps=2))
    return config


@pytest.fixture
def copy(stopped, tmp_path):
    out = tmp_path / "stage"
    shutil.copytree(stopped.output_dir, out, symlinks=True)
    return dataclasses.replace(stopped, output_dir=str(out)), out / "deepspeed"


def test_the_runner_records_every_file_it_saves(copy):
    _, ds_dir = copy
    assert (ds_dir / "latest").read_text() == "step2" == latest_tag(ds_dir)
    recorded = json.loads(manifest_path(ds_dir, "step2").read_text())["files"]
    on_disk = {str(p.relative_to(ds_dir / "step2")) for p in (ds_dir / "step2").rglob("*") if p.is_file()}
    assert set(recorded) == on_disk and any(name.endswith("model_states.pt") for name in on_disk)
    verify(ds_dir, "step2")


def test_a_planted_pickle_is_refused_before_it_is_loaded(copy, tmp_path):
    config, ds_dir = copy
    marker = tmp_path / "code-ran"
    target = next((ds_dir / "step2").glob("*model_states.pt"))
    target.write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(UntrustedCheckpointError, match=f"{target.name} does not match its sha256"):
        run_stage(config)
    assert not marker.exists()


@pytest.mark.parametrize("change", ["extra file", "missing file", "no manifest", "symlink in tag"])
def test_a_tag_that_differs_from_its_manifest_is_refused(copy, tmp_path, change):
    config, ds_dir = copy
    tag_dir = ds_dir / "step2"
    first = sorted(tag_dir.glob("*.pt"))[0]
    if change == "extra file":
        (tag_dir / "zero_pp_rank_9_mp_rank_00_optim_states.pt").write_bytes(b"planted")
        expected = "zero_pp_rank_9_mp_rank_00_optim_states.pt is not in step2.sha256.json"
    elif change == "missing file":
        first.unlink()
        expected = f"{first.name} listed in step2.sha256.json is missing"
    elif change == "no manifest":
        manifest_path(ds_dir, "step2").unlink()
        expected = "has no manifest step2.sha256.json"
    else:
        shutil.move(first, tmp_path / first.name)
        first.symlink_to(tmp_path / first.name)
        expected = f"{first.name} is a symlink"
    with pytest.raises(UntrustedCheckpointError, match=expected):
        run_stage(config)


@pytest.mark.parametrize("latest", ["../../elsewhere", "/tmp", "..", "step2/../../x", "outside-link"])
def test_a_latest_tag_that_leaves_the_folder_is_refused(copy, tmp_path, latest):
    config, ds_dir = copy
    outside = tmp_path / "elsewhere"
    shutil.copytree(ds_dir / "step2", outside)
    shutil.copy(manifest_path(ds_dir, "step2"), manifest_path(ds_dir, "outside-link"))
    (ds_dir / "outside-link").symlink_to(outside)  # a name inside, a folder outside
    (ds_dir / "latest").write_text(latest)
    with pytest.raises(UntrustedCheckpointError, match="latest names"):
        run_stage(config)


def test_a_verified_checkpoint_resumes(copy):
    config, _ = copy
    result = run_stage(config)
    assert result.steps == 3 and result.final_loss is not None


def test_two_ranks_resume_a_verified_checkpoint_and_both_refuse_a_changed_one(tmp_path, tokenizer_dir, shards):
    """Under torchrun every rank learns the verdict: a changed file fails the launch (no rank hangs)."""
    from tasks.train import LaunchConfig, run_logged

    spec = dataclasses.replace(get_stage("tiny", "sft"), num_steps=3, checkpoint_every=2)
    config = RunConfig(stage=spec, output_dir=str(tmp_path / "stage"), tokenizer_dir=tokenizer_dir, shards=shards)
    launch = LaunchConfig(launcher="torchrun", num_processes=2, timeout_s=600)
    Path(config.output_dir).mkdir()
    path = tmp_path / "run_config.json"
    path.write_text(dataclasses.replace(config, stop_after_steps=2).to_json())
    run_logged(launch.command(path), timeout_s=600, name="stop after 2")
    ds_dir = Path(config.output_dir) / "deepspeed"
    verify(ds_dir, "step2")
    healthy = tmp_path / "healthy"
    shutil.copytree(ds_dir, healthy, symlinks=True)

    target = sorted((ds_dir / "step2").glob("*optim_states.pt"))[-1]  # rank 1's optimizer shard
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    target.write_bytes(bytes(data))
    path.write_text(config.to_json())
    with pytest.raises(RuntimeError, match=f"{target.name} does not match its sha256"):
        run_logged(launch.command(path), timeout_s=600, name="tampered")

    shutil.rmtree(ds_dir)
    shutil.copytree(healthy, ds_dir, symlinks=True)
    run_logged(launch.command(path), timeout_s=600, name="resume")
    assert json.loads((Path(config.output_dir) / "result.json").read_text())["steps"] == 3
