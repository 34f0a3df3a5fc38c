"""keye replay: train a checkpoint again from its lineage and check that the weights come out the same.

``keye replay CHECKPOINT --db FILE [--run-dir NEW]`` re-runs the recorded stages that made CHECKPOINT (an
artifact id, URI or path in the lineage file FILE) in the folder NEW: the same shards (checked by sha256),
stage specs, run configs and seeds (``tasks.replay``). It prints one line per stage and exits 0 when the
checkpoint's ``model.safetensors`` has the recorded sha256, 1 when it differs, 2 when the replay is refused
(a shard missing or changed, a checkpoint recorded without its run config).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def default_run_dir(checkpoint: str) -> str:
    """``runs/replay-<12 characters of the checkpoint id>`` (``:`` and ``/`` are not wanted in a folder name)."""
    tail = checkpoint.rstrip("/").replace(":", "-").replace("/", "-")[-12:]
    return str(Path("runs") / f"replay-{tail}")


def cmd_replay(args: argparse.Namespace) -> int:
    from tasks.lineage import LineageStore
    from tasks.replay import replay

    with LineageStore(args.db, read_only=True) as store:
        target = store.resolve(args.checkpoint)
    run_dir = args.run_dir or default_run_dir(target)
    results = replay(args.db, target, run_dir)
    print(f"replay of {target} in {Path(run_dir).resolve()}")
    for r in results:
        verdict = "reused (already there)" if r.reused else ("identical" if r.identical else "DIFFERS")
        print(f"  {r.stage:<12} recorded {r.recorded_sha256[:16]}  replayed {r.replayed_sha256[:16]}  {verdict}")
    final = results[-1]
    if final.identical:
        print(f"{final.stage}: model.safetensors is bit-identical to the recorded checkpoint ({final.recorded_sha256})")
        return 0
    print(f"{final.stage}: model.safetensors differs: sha256 {final.replayed_sha256}, recorded {final.recorded_sha256}")
    # the usual cause: the code changed since (a replay re-runs today's code on the recorded inputs)
    from tasks.lineage.prefect_tasks import code_version

    with LineageStore(args.db, read_only=True) as store:
        row = store.con.execute(
            "SELECT r.code_version FROM artifacts a JOIN runs r ON r.run_id = a.created_by_run WHERE a.artifact_id = ?",
            [target],
        ).fetchone()
    print(f"code version that trained it: {row[0] if row else 'not recorded'}; replayed with: {code_version()}")
    return 1


def register(subparsers: argparse._SubParsersAction) -> None:
    summary = __doc__.splitlines()[0].split(": ", 1)[1]
    parser = subparsers.add_parser("replay", help="re-train a checkpoint from its lineage and compare weights")
    parser.description = summary
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint artifact id, URI or path")
    parser.add_argument("--db", required=True, help="lineage DuckDB file that recorded it (<run dir>/lineage.duckdb)")
    parser.add_argument(
        "--run-dir",
        default=None,
        help="new run folder to train in (default: runs/replay-<end of the checkpoint's id>); "
        "input checkpoints already there with the recorded sha256 are reused",
    )
    parser.set_defaults(func=cmd_replay)
