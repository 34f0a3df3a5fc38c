"""``keye bench``: run every ``benchmarks/bench_*.py`` and print one table of their ratios.

Each benchmark measures its ratio side by side in its own run and ends with ``ratio: X``; this command
only runs them one after another (never in parallel, so they do not disturb each other's timings).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
RATIO = re.compile(r"^ratio:\s*([-+0-9.eE]+|nan|inf)\s*$")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="run the benchmarks and print their ratios")
    p.add_argument("names", nargs="*", help="only these benchmarks (e.g. slowfast shards)")
    p.add_argument("--timeout-s", type=float, default=900, help="limit per benchmark")
    p.set_defaults(func=run_benchmarks)


def run_benchmarks(args: argparse.Namespace) -> int:
    scripts = sorted(BENCH_DIR.glob("bench_*.py"))
    if args.names:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.names]
    if not scripts:
        raise ValueError(f"no benchmarks matching {args.names} in {BENCH_DIR}")
    rows = []
    for script in scripts:
        started = time.monotonic()
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=args.timeout_s)
        lines = proc.stdout.strip().splitlines()
        ratio = next((m.group(1) for m in map(RATIO.match, reversed(lines)) if m), None)
        if ratio is None and lines and lines[-1].startswith("skipped"):
            ratio = "skipped"
        print(f"--- {script.name} ({time.monotonic() - started:.0f} s)\n" + "\n".join(lines[-8:]), flush=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
        rows.append((script.stem.removeprefix("bench_"), ratio or "failed", lines[-2] if len(lines) > 1 else ""))
    print("\nbenchmark   ratio     context")
    for name, ratio, context in rows:
        print(f"{name:<11} {ratio:<9} {context[:90]}")
    return 0 if all(r != "failed" for _, r, _ in rows) else 1
