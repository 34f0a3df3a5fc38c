"""Lineage store: bulk insert rate vs executemany, and ancestry queries on a graph of 1M edges.

1. Insert the same sample of edges (dataclasses) into a fresh store twice: through ``record_edges``
   (Arrow + INSERT ... SELECT) and through ``executemany`` with the same ON CONFLICT clause.
2. Bulk-insert a 1M-edge binary tree (``n:i`` made from ``n:2i+1`` and ``n:2i+2``) plus a 1,000-long
   chain, then time ``ancestors`` / ``descendants`` on it.

Last line: ``ratio: X`` = bulk rows/s / executemany rows/s on the same sample. Asserts nothing about time.
Run: ``.venv/bin/python benchmarks/bench_lineage.py`` (about half a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from tasks.lineage import Edge, LineageStore

RUN = "bench"


def sample_edges(num_rows: int, prefix: str) -> list[Edge]:
    return [Edge(parent_id=f"{prefix}p:{i}", child_id=f"{prefix}c:{i}", run_id=RUN) for i in range(num_rows)]


def rate_bulk(store: LineageStore, edges: list[Edge]) -> float:
    start = time.perf_counter()
    written = store.record_edges(edges)
    seconds = time.perf_counter() - start
    assert written == len(edges), (written, len(edges))
    return len(edges) / seconds


def rate_executemany(store: LineageStore, edges: list[Edge]) -> float:
    start = time.perf_counter()
    con = store.con
    con.executemany(
        "INSERT INTO edges (parent_id, child_id, run_id, relation) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [(e.parent_id, e.child_id, e.run_id, e.relation) for e in edges],
    )
    seconds = time.perf_counter() - start
    con.close()
    return len(edges) / seconds


def tree_frame(num_edges: int, chain: int) -> pd.DataFrame:
    """Binary tree: node i is made from 2i+1 and 2i+2 (edges child -> parent), plus a separate chain."""
    children = [i // 2 for i in range(num_edges)]
    parents = [i + 1 for i in range(num_edges)]  # 2*(i//2)+1+(i%2) == i+1
    frame = pd.DataFrame({"parent_id": [f"n:{p}" for p in parents], "child_id": [f"n:{c}" for c in children]})
    chain_frame = pd.DataFrame(
        {"parent_id": [f"chain:{i + 1}" for i in range(chain)], "child_id": [f"chain:{i}" for i in range(chain)]}
    )
    frame = pd.concat([frame, chain_frame], ignore_index=True)
    return frame.assign(run_id=RUN, relation="made_from")


def timed(label: str, func, repeats: int = 3):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - start)
    print(
        f"{label}: {best * 1e3:.1f} ms (best of {repeats}), {len(result)} nodes, "
        f"max depth {max((n.depth for n in result), default=0)}"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # executemany manages well under 100 rows/s here: a larger sample only makes the run longer.
    parser.add_argument("--sample", type=int, default=500, help="rows per insert method")
    parser.add_argument("--edges", type=int, default=1_000_000, help="edges in the tree")
    parser.add_argument("--chain", type=int, default=1_000, help="length of the extra chain")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, LineageStore(Path(tmp) / "bench.duckdb") as store:
        store.record_edges(sample_edges(100, "warm"))  # first-statement costs out of both timings
        bulk = rate_bulk(store, sample_edges(args.sample, "b"))
        many = rate_executemany(store, sample_edges(args.sample, "m"))
        print(f"insert {args.sample} edges: bulk {bulk:,.0f} rows/s, executemany {many:,.0f} rows/s")

        frame = tree_frame(args.edges, args.chain)
        start = time.perf_counter()
        store.record_edges(frame)
        seconds = time.perf_counter() - start
        print(
            f"bulk insert {len(frame):,} edges from a DataFrame: {seconds:.1f} s ({len(frame) / seconds:,.0f} rows/s, "
            f"{len(frame) / seconds / many:,.0f}x executemany)"
        )

        leaf = f"n:{args.edges}"  # a deepest node: its descendants are its path to the root
        timed("descendants of a leaf (path to root)", lambda: store.descendants(leaf))
        timed("ancestors of n:1000 (its subtree)", lambda: store.ancestors("n:1000"))
        timed("ancestors of n:10 (a large subtree)", lambda: store.ancestors("n:10"), repeats=1)
        timed(f"ancestors along a {args.chain}-edge chain", lambda: store.ancestors("chain:0"), repeats=1)
    print(f"ratio: {bulk / many:.1f}")


if __name__ == "__main__":
    main()
