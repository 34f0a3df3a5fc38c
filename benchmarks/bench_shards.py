"""Shard writing time vs ``tar cf`` of the same media files, measured in the same run.

Builds a few hundred real JPEG photos (skimage, several sizes) and text records, plans them once (not
timed), then times ``tasks.shards.write_shards`` (tar framing, per-sample JSON, sha256 while writing,
rename per shard; default config, no fsync) against ``tar cf`` over the same media files, best of interleaved rounds.
Goal: ratio <= 1.25. Prints ``ratio: X`` (ours / tar) as the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import tempfile
import time
from pathlib import Path

from PIL import Image

from data_specs.schemas import Record
from tasks.shards import ShardConfig, estimate_samples, write_shards
from tasks.sources.skimage_photos import PHOTOS, load_photo


def make_records(work: Path, num_images: int, side_px: int = 256) -> list[Record]:
    records = []
    for i in range(num_images):
        name = PHOTOS[i % len(PHOTOS)]
        path = work / f"img-{i:05d}.jpg"
        Image.fromarray(load_photo(name, side_px + side_px // 4 * (i % 7))).save(path, quality=92)
        records.append(Record(id=f"bench-{i:05d}", source="skimage", modality="image", task="caption",
                              question="Describe this image.", answer=f"Photo {name}.", media_path=str(path)))
    return records


def best_of(rounds: int, *runs) -> list[float]:
    """Best time of each run over ``rounds`` rounds, interleaved so that all face the same machine load."""
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--side-px", type=int, default=256, help="smallest photo side; larger = bigger samples")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        media = work / "media"
        media.mkdir()
        records = make_records(media, args.images, args.side_px)
        config = ShardConfig(stage="bench", out_dir=str(work / "shards"), max_records_per_shard=100)
        samples = list(estimate_samples(records, config).values())
        files = sorted(p.name for p in media.iterdir())
        total_mb = sum((media / f).stat().st_size for f in files) / 2**20

        def tar() -> None:
            subprocess.run(["tar", "cf", str(work / "plain.tar"), "-C", str(media), *files], check=True)

        tar()  # warm the page cache for both
        durable_config = dataclasses.replace(config, fsync=True)
        ours, durable, plain = best_of(
            args.rounds, lambda: write_shards(samples, config), lambda: write_shards(samples, durable_config), tar
        )
        shards = sorted((work / "shards" / "bench").glob("*.tar"))
        shard_mb = sum(p.stat().st_size for p in shards) / 2**20
        print(f"files: {len(files)} ({total_mb:.1f} MiB) -> {len(shards)} shards ({shard_mb:.1f} MiB)")
        print(f"write_shards: {ours * 1000:.1f} ms ({total_mb / ours:.0f} MiB/s)")
        print(f"write_shards with fsync: {durable * 1000:.1f} ms (ratio {durable / plain:.3f}, not the goal's)")
        print(f"tar cf:       {plain * 1000:.1f} ms ({total_mb / plain:.0f} MiB/s)")
        print(f"ratio: {ours / plain:.3f}")


if __name__ == "__main__":
    main()
