"""Packing efficiency: real tokens / row slots for a realistic length mix, packed vs one sample per row.

Lengths are drawn like the balancer benchmark's mix (text, single images, videos); packing is the
runner's own first-fit (``keye_model.training.packing.pack``) into rows of ``--seq-len``. Last line:
``ratio: X`` (packed efficiency / unpacked efficiency).
"""

from __future__ import annotations

import argparse
import random

import torch

from keye_model.losses import IGNORE_INDEX
from keye_model.training.packing import Encoded, pack


def lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.3:
            out.append(rng.randint(64, 1024))
        elif kind < 0.85:
            out.append(rng.choice([64, 256, 1024, 4096]) // 4 + rng.randint(32, 512))
        else:
            out.append(sum(rng.choice([48, 192]) for _ in range(rng.randint(16, 32))) + 256)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--micro-batch", type=int, default=64, help="samples packed together per micro batch")
    args = parser.parse_args()
    sizes = [min(n, args.seq_len) for n in lengths(args.samples)]
    empty = torch.zeros(0, 588)
    packed_real = packed_slots = 0
    unpacked_slots = 0
    for start in range(0, len(sizes), args.micro_batch):
        group = sizes[start : start + args.micro_batch]
        samples = [
            Encoded(
                f"s{start + i}",
                torch.ones(n, dtype=torch.long),
                torch.full((n,), IGNORE_INDEX),
                empty,
                torch.zeros(0, 2, dtype=torch.long),
            )
            for i, n in enumerate(group)
        ]
        batch = pack(samples, args.seq_len, pad_id=0)
        packed_real += batch.num_real_tokens
        packed_slots += batch.input_ids.numel()
        unpacked_slots += len(group) * max(group)  # one sample per row, padded to the longest
    packed, unpacked = packed_real / packed_slots, packed_real / unpacked_slots
    print(f"{args.samples} samples, seq_len {args.seq_len}, {args.micro_batch} per micro batch")
    print(f"packing efficiency: packed {packed:.3f}, one sample per row {unpacked:.3f}")
    print(f"ratio: {packed / unpacked:.3f}")


if __name__ == "__main__":
    main()
