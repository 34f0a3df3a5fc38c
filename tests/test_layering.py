"""Imports point one way: data_specs <- keye_model <- tasks <- flows (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["data_specs", "keye_model", "tasks", "flows"]
#: Third-party packages a layer must never import.
FORBIDDEN = {
    "data_specs": {"torch", "transformers", "deepspeed", "prefect", "duckdb", "webdataset"},
    "keye_model": {"prefect", "duckdb"},
    "tasks": set(),
    "flows": set(),
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_only_downwards(layer):
    higher = set(LAYERS[LAYERS.index(layer) + 1 :])
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"layer {layer} has no modules"
    bad = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in imported_roots(path) & (higher | FORBIDDEN[layer] | {"keye_cli"})
    }
    assert not bad, sorted(bad)
