"""Cache keys of file-passing tasks: content of inputs, identity of the run folder of outputs."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

from tasks.caching import file_content_cache_key, mark_run_folder, run_identity


def some_task(records_path: str, out_path: str) -> str:
    return out_path


CONTEXT = SimpleNamespace(task=SimpleNamespace(fn=some_task))


def key(records, out):
    return file_content_cache_key(CONTEXT, {"records_path": str(records), "out_path": str(out)})


def test_key_follows_input_content_and_the_run_folder_identity(tmp_path):
    run = tmp_path / "run"
    mark_run_folder(run)
    records = tmp_path / "records.jsonl"
    records.write_text("a\n")
    out = run / "posttrain" / "problems.jsonl"
    first = key(records, out)
    assert key(records, out) == first  # same inputs, same folder: a cache hit
    records.write_text("b\n")
    assert key(records, out) != first  # rewritten input at the same path: a miss
    records.write_text("a\n")
    shutil.rmtree(run)
    mark_run_folder(run)  # the folder deleted and made again: its old cached outputs are gone
    assert key(records, out) != first


def test_run_identity_is_found_from_any_depth(tmp_path):
    ident = mark_run_folder(tmp_path)
    assert run_identity(tmp_path / "a" / "b" / "c.jsonl") == ident == mark_run_folder(tmp_path)
