"""The shipped ``prefect.yaml`` checked against the code: every entrypoint imports and names a real
``@flow`` with the deployment's flow name, every parameter is one the flow accepts, and each deployment
goes to the process pool with our loggers and a pull step into the checkout."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in RECIPE["deployments"]}
#: deployment name -> flow name; `keye/full-pipeline` is the one the README and CI run.
EXPECTED = {
    "full-pipeline": "keye",
    "curate": "curate",
    "pretrain": "pretrain",
    "posttrain": "posttrain",
    "evaluate": "evaluate",
}
#: Parameters a run must be given (the flow has no default): the phases that read a folder curated before.
ASKED_AT_RUN_TIME = {"pretrain": {"run_dir"}, "posttrain": {"run_dir"}, "evaluate": {"run_dir"}}


def load_flow(entrypoint: str):
    """The object an entrypoint ``path/to/file.py:name`` names, imported the way a worker does it."""
    from prefect import Flow

    path, name = entrypoint.rsplit(":", 1)
    file = ROOT / path
    assert file.is_file(), f"entrypoint {entrypoint}: no file {file}"
    module_name = path.removesuffix(".py").replace("/", ".")
    spec = importlib.util.find_spec(module_name)  # the package module, so its relative imports resolve
    assert spec is not None and Path(spec.origin).resolve() == file.resolve(), (
        f"{entrypoint}: not importable as {module_name}"
    )
    obj = getattr(importlib.import_module(module_name), name, None)
    assert isinstance(obj, Flow), f"entrypoint {entrypoint}: {name} is {type(obj).__name__}, not a @flow"
    return obj


def test_the_expected_deployments_exist():
    assert set(DEPLOYMENTS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_entrypoint_names_the_flow_and_its_parameters(name):
    deployment = DEPLOYMENTS[name]
    flow = load_flow(deployment["entrypoint"])
    assert flow.name == EXPECTED[name], f"{name}: {deployment['entrypoint']} is flow {flow.name!r}"
    signature = inspect.signature(flow.fn)
    params = deployment.get("parameters") or {}
    unknown = sorted(set(params) - set(signature.parameters))
    assert not unknown, f"deployment {flow.name}/{name}: parameters {unknown} not in {list(signature.parameters)}"
    required = {n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty}
    assert required - set(params) == ASKED_AT_RUN_TIME.get(name, set()), f"{name}: required {sorted(required)}"
    at_run_time = {n: "runs/some-curated-run" for n in ASKED_AT_RUN_TIME.get(name, ())}
    signature.bind(**params, **at_run_time)  # with them the flow can be called (no other required parameter)
    # what Prefect itself does with them at run time: validate against the flow's types
    flow.validate_parameters({**params, **at_run_time})


@pytest.mark.parametrize("name", ["full-pipeline", "curate"])
def test_each_run_gets_its_own_folder_by_default(name):
    """No shared default folder: a deployment run without run_dir writes runs/<its flow run name>, not
    `make demo`'s runs/demo (where it would reuse and retrain what the demo left)."""
    deployment = DEPLOYMENTS[name]
    assert "run_dir" not in (deployment.get("parameters") or {})
    flow = load_flow(deployment["entrypoint"])
    assert inspect.signature(flow.fn).parameters["run_dir"].default is None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_work_pool_and_logging(name):
    pool = DEPLOYMENTS[name]["work_pool"]
    assert pool["name"] == "local-process"
    env = pool["job_variables"]["env"]
    assert set(env["PREFECT_LOGGING_EXTRA_LOGGERS"].split(",")) == {"keye_model", "tasks", "flows"}
    assert env["KEYE_LOG_LEVEL"] == "INFO"  # else their INFO records never reach a handler
    # raising the root logger instead would print every library's INFO (httpx: a line per API call)
    assert "PREFECT_LOGGING_ROOT_LEVEL" not in env


def test_pull_step_moves_into_the_recorded_checkout():
    # Without an explicit pull section `prefect deploy` would git-clone the origin remote.
    (step,) = RECIPE["pull"]
    directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
    (build,) = RECIPE["build"]
    shell = build["prefect.deployments.steps.run_shell_script"]
    assert directory == "{{ " + shell["id"] + ".stdout }}"
    assert "KEYE_REPO_DIR" in shell["script"] and shell["shell"] is True
