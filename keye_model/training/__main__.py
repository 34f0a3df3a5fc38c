"""Entry point that ``deepspeed`` / ``torchrun`` start on every rank:

torchrun --nproc_per_node 8 -m keye_model.training --config run.json
deepspeed --num_gpus 8 --module keye_model.training --config run.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from keye_model.training.runner import RunConfig, run_stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keye_model.training")
    parser.add_argument("--config", required=True, help="RunConfig JSON file")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_stage(RunConfig.from_json(Path(args.config).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
