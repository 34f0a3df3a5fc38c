"""The ``keye`` console script: one argparse parser, one module per subcommand group.

Each subcommand module exposes ``register(subparsers)`` and sets ``func`` on its parser; heavy imports
(torch, prefect, duckdb) happen inside the command functions so ``keye --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: Subcommand modules under keye_cli/, each with register(subparsers).
COMMAND_MODULES = ("video", "lineage", "run", "bench", "review", "replay")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keye", description="Keye-VL-1.5 data and training pipeline")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"keye_cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for chatty in ("httpx", "httpcore"):  # one line per Prefect API call otherwise
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"keye {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
