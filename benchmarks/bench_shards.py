"""Shard writing time: ours vs webdataset's own TarWriter / ShardWriter vs ``tar cf``, in the same run.

Builds a few hundred real JPEG photos (skimage, several sizes) and text records, plans them once (not
timed), then times, best of interleaved rounds, on the same samples:

- ``tasks.shards.write_shards`` (ours): hand-built tar headers (``tasks/tar_sink.py``), sha256 while
  writing, a hidden partial file renamed per shard; default config, no fsync.
- the same job done with webdataset's ``TarWriter``: same shards, same sha256 and rename, only the tar
  member writing swapped. Its bytes must equal ours (checked), so the comparison is like for like.
- webdataset's ``ShardWriter`` as its docs use it: its own file names, no hash, no rename (less work).
- ``tar cf`` over the same media files (the floor: no per-sample JSON, no hash).

``tasks/shards.py`` keeps our writer only while it is the faster one: the printout says which is.
Goal: ours / tar <= 1.25. Prints ``ratio: X`` (ours / tar) as the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import queue
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import webdataset as wds
from PIL import Image

from data_specs.schemas import Record
from tasks.shards import ShardConfig, estimate_samples, read_entries, write_shards
from tasks.sources.skimage_photos import PHOTOS, load_photo


def make_records(work: Path, num_images: int, side_px: int = 256) -> list[Record]:
    records = []
    for i in range(num_images):
        name = PHOTOS[i % len(PHOTOS)]
        path = work / f"img-{i:05d}.jpg"
        Image.fromarray(load_photo(name, side_px + side_px // 4 * (i % 7))).save(path, quality=92)
        records.append(
            Record(
                id=f"bench-{i:05d}",
                source="skimage",
                modality="image",
                task="caption",
                question="Describe this image.",
                answer=f"Photo {name}.",
                media_path=str(path),
            )
        )
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


class HashingFile:
    """A file object that hashes what passes through it on a helper thread, as ours does (sha256 releases
    the GIL), so the TarWriter run is timed with the same overlap of hashing and writing."""

    def __init__(self, raw) -> None:
        self.raw, self.sha, self._chunks = raw, hashlib.sha256(), queue.SimpleQueue()
        self._hasher = threading.Thread(target=self._hash, daemon=True)
        self._hasher.start()

    def _hash(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self.sha.update(chunk)

    def write(self, data: bytes) -> int:
        self._chunks.put(bytes(data))
        return self.raw.write(data)

    def hexdigest(self) -> str:
        self._chunks.put(None)
        self._hasher.join()
        return self.sha.hexdigest()


def write_with_tarwriter(samples, config: ShardConfig) -> list[str]:
    """``write_shards``' job (same batching, sha256, partial + rename) with webdataset's TarWriter."""
    out = Path(config.out_dir) / config.mix
    out.mkdir(parents=True, exist_ok=True)
    digests, raw, writer, hashing, partial, count = [], None, None, None, None, 0

    def close() -> None:
        writer.close()
        raw.close()
        digests.append(hashing.hexdigest())
        os.replace(partial, partial.with_name(partial.name[1 : -len(".partial")]))

    for _, entry in read_entries(samples):  # the same threaded read-ahead ours uses, inside the time
        if count % config.max_records_per_shard == 0:
            if writer is not None:
                close()
            partial = out / f".{config.mix}-{len(digests):06d}.tar.partial"
            raw = open(partial, "wb", buffering=2**20)
            hashing = HashingFile(raw)
            writer = wds.TarWriter(hashing, encoder=False, mtime=0)
        writer.write(entry)
        count += 1
    if writer is not None:
        close()
    return digests


def write_with_shardwriter(samples, out: Path, maxcount: int) -> None:
    """webdataset's ShardWriter as documented: it names and splits the files; nothing hashed or renamed."""
    out.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=maxcount, encoder=False, mtime=0, verbose=0) as writer:
        for _, entry in read_entries(samples):
            writer.write(entry)


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
        config = ShardConfig(mix="bench", out_dir=str(work / "shards"), max_records_per_shard=100)
        wds_config = dataclasses.replace(config, out_dir=str(work / "tarwriter"))
        samples = list(estimate_samples(records, config).values())
        files = sorted(p.name for p in media.iterdir())
        total_mb = sum((media / f).stat().st_size for f in files) / 2**20

        def tar() -> None:
            subprocess.run(["tar", "cf", str(work / "plain.tar"), "-C", str(media), *files], check=True)

        tar()  # warm the page cache for all
        durable_config = dataclasses.replace(config, fsync=True)
        ours, durable, tarwriter, shardwriter, plain = best_of(
            args.rounds,
            lambda: write_shards(samples, config),
            lambda: write_shards(samples, durable_config),
            lambda: write_with_tarwriter(samples, wds_config),
            lambda: write_with_shardwriter(samples, work / "shardwriter", config.max_records_per_shard),
            tar,
        )
        shards = sorted((work / "shards" / "bench").glob("*.tar"))
        theirs = sorted((work / "tarwriter" / "bench").glob("*.tar"))
        same = [p.read_bytes() for p in shards] == [p.read_bytes() for p in theirs]
        shard_mb = sum(p.stat().st_size for p in shards) / 2**20
        print(
            f"files: {len(files)} ({total_mb:.1f} MiB) -> {len(shards)} shards ({shard_mb:.1f} MiB); "
            f"ours and TarWriter's bytes identical: {same}"
        )
        for label, seconds in (
            ("write_shards (ours)", ours),
            ("same with webdataset TarWriter", tarwriter),
            ("webdataset ShardWriter (no hash/rename)", shardwriter),
            ("tar cf", plain),
        ):
            speed = total_mb / seconds
            print(f"{label:40s} {seconds * 1000:7.1f} ms ({speed:4.0f} MiB/s), / tar {seconds / plain:.3f}")
        print(f"write_shards with fsync: {durable * 1000:.1f} ms (ratio {durable / plain:.3f}, not the goal's)")
        faster = "ours" if ours < tarwriter else "webdataset's TarWriter"
        print(f"ratio TarWriter / ours: {tarwriter / ours:.3f} ({faster} is faster)")
        print(f"ratio webdataset TarWriter / tar: {tarwriter / plain:.3f}")
        print(f"ratio ShardWriter / tar: {shardwriter / plain:.3f}")
        print(f"ratio: {ours / plain:.3f}")


if __name__ == "__main__":
    main()
