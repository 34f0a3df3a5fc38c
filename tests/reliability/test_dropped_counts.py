"""A limit that leaves items of a user's folder unread says how many beyond the log (issue 11 item 3): in the
curate flow's sources table (``source_table``) and in the curation metrics (``records_dropped``)."""

from __future__ import annotations

import json

from tasks.curation import collection_lineage, source_table
from tasks.sources import SourceSpec, collect_records
from tasks.validate import validate_records


def test_records_a_folder_limit_drops_are_counted_per_source(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    lines = [{"question": f"{i}?", "answer": str(i)} for i in range(6)] + [{"question": "no answer"}]
    (root / "text.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    collected = {
        "local-folder": collect_records(SourceSpec(name="local-folder", root=str(root), folder_limit=4), tmp_path),
        "text-instructions": collect_records(SourceSpec(name="text-instructions", limit=2), tmp_path / "work"),
    }
    rejected = [r for c in collected.values() for r in c.rejected]
    report = validate_records(
        [r for c in collected.values() for r in c.records], quarantine_path=tmp_path / "q.jsonl", rejected=rejected
    )
    table = {row["source"]: row for row in source_table(collected, report)}
    assert table["local-folder"] == {
        "source": "local-folder",
        "records_collected": 4,
        "inputs_rejected": 0,  # the line without an answer was one of those left unread
        "records_dropped": 3,
        "records_quarantined": 0,
        "records_passed": 4,
    }
    assert table["text-instructions"]["records_dropped"] == 0 and table["text-instructions"]["records_passed"] == 2

    batch = collection_lineage(
        "run-1", {k: c.records for k, c in collected.items()}, report, {k: c.num_dropped for k, c in collected.items()}
    )
    metrics = {m.name: m.value for m in batch.metrics}
    assert metrics["records_dropped"] == 3 and metrics["records_dropped/local-folder"] == 3
    assert metrics["records_dropped/text-instructions"] == 0
    (source,) = [a for a in batch.artifacts if a.uri == "source://local-folder"]
    assert source.metadata == {"records_dropped": 3}
