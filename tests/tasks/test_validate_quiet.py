"""No Great Expectations chatter in our logs: validating a few records at INFO (what ``keye run`` and a
worker's flow run log at) prints none of GX's import-time "Skipping registering function" lines nor its
bare ``[]`` datasource dumps. Runs in a fresh interpreter, since GX logs those lines once, on import."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_validating_records_prints_no_gx_chatter(tmp_path):
    script = textwrap.dedent(
        """
        import logging
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        from tasks.validate import run_suite
        rows = [{"id": "r1"}, {"id": "r2"}]
        reasons = run_suite("record", rows)
        print("validated", len(reasons), "rows; first fails", len(reasons[0]), "checks")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "validated 2 rows" in output and "first fails 0 checks" not in output  # the suite really ran
    assert "Skipping registering" not in output, output[:2000]
    assert "great_expectations" not in output, output[:2000]
    assert "[]" not in output.splitlines(), output[:2000]
