"""WebDataset shards per data mix: token estimates, a mix sampler, crash-safe shard writing and a manifest.

Each sample is one tar group under a key made from the record id (no dots, ``__r<n>`` for the n-th
repeat): ``json`` (the record plus ``tokens`` and ``repeat``) always; an image adds its encoded file bytes
under its suffix (``jpg``, ``png``...); a video adds its file bytes (``mp4``...) and its Slow-Fast plan
(``plan.json``). Text records are the ``json`` alone. Shards read back with plain
``webdataset.WebDataset``.

Crash safety: a shard is written to a hidden ``.<name>.partial`` file, flushed, fsynced and renamed to
``<mix>-NNNNNN.tar`` only when complete, so a killed writer never leaves a partial ``*.tar`` visible;
the manifest is written (the same way) last, so a mix without a manifest is an unfinished one. A new
run first removes that mix's old shards, manifest and stale partials. Paths in a manifest are relative
to its folder, so a run folder can be copied or moved.

Before the manifest is written its rows pass the ``manifest`` GX suite (``quarantine_bad_shards``, one run per
mix): a shard that fails (no samples or tokens, a malformed sha256 or name, smaller than a tar) is moved to
``<mix>/quarantine/`` and listed with its reasons in ``<mix>/quarantine/shards.jsonl``; the manifest, its
counts and shares cover the shards that passed.

Mix sampler: records fall in buckets (a modality, or a (modality, source) when the mix splits it), each
with a planned share of tokens. Starting from nothing, it repeatedly adds the next record of the bucket
furthest below its planned tokens (records cycle in a seeded order; a bucket that runs out starts over,
which is a repeat) until the target is reached and every share is within the mix's tolerance. Worked
example: planned video 0.24 / image 0.50 / text 0.26, target 1,000 tokens, videos of 100 tokens, images
of 20, texts of 10: video gets 3 records (300 >= 240, the chunky bucket overshoots), then images and
texts keep filling their deficits against the growing total (e.g. 1,250 tokens: 300 / 625 / 325,
exactly 24 / 50 / 26%).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import random
import re
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task

from data_specs.mixes import DataMix
from data_specs.schemas import Record
from keye_model.geometry import fit_size, num_tokens
from tasks.tar_sink import TarSink
from tasks.validate import quarantine_failures

log = logging.getLogger(__name__)

MIX_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
WORD_RE = re.compile(r"\w+|[^\w\s]")
#: Most samples the sampler may choose before it gives up on a mix (it converges far sooner).
MAX_SAMPLES = 1_000_000
Tokenizer = Callable[[str], "int | Sequence[int]"]


@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    """Where and how one data mix's shards are written."""

    mix: str
    """Data mix name; shards are ``<out_dir>/<mix>/<mix>-NNNNNN.tar``."""
    out_dir: str
    """Root folder of all mixes' shards."""
    max_records_per_shard: int = 256
    """A shard closes after this many samples."""
    max_bytes_per_shard: int = 512 * 2**20
    """... or before its payload would pass this many bytes (a single larger sample gets its own shard)."""
    image_min_tokens: int = 4
    """Fewest tokens an image is resized to (SPEC.md section 1: images 4 ... 20,480)."""
    image_max_tokens: int = 20_480
    """Most tokens an image is resized to."""
    slow_fast: str = "default"
    """``keye_model.slow_fast.SlowFastConfig`` preset that plans videos (``default``, ``tiny``...)."""
    target_tokens: int | None = None
    """Tokens to sample; None: the smallest total that uses every record of the mix at least once."""
    seed: int = 0
    """Seeds the sampler's record order and the shuffle of samples across shards."""
    fsync: bool = False
    """fsync each shard before its rename. The rename alone makes shards all-or-nothing against a killed
    process (tested); fsync adds power-loss durability on any filesystem at ~1.5x the writing time."""

    def __post_init__(self) -> None:
        if not MIX_RE.match(self.mix):
            raise ValueError(f"shard mix name {self.mix!r} must match {MIX_RE.pattern}")
        if self.max_records_per_shard < 1 or self.max_bytes_per_shard < 1:
            raise ValueError(f"mix {self.mix}: shard limits must be >= 1")
        if self.target_tokens is not None and self.target_tokens < 1:
            raise ValueError(f"mix {self.mix}: target_tokens must be >= 1, got {self.target_tokens}")


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One planned shard entry."""

    key: str
    """WebDataset key: the record id, plus ``__r<n>`` for its n-th repeat."""
    record: Record
    """The record."""
    tokens: int
    """Estimated tokens: text plus image or video tokens."""
    repeat: int = 0
    """0 for the first use of the record."""
    plan_json: str | None = None
    """Slow-Fast plan of a video record."""


@dataclass(frozen=True, kw_only=True)
class ShardInfo:
    """One written shard, with what lineage needs."""

    path: str
    """Absolute path of the shard."""
    name: str
    """File name, ``<mix>-NNNNNN.tar``."""
    sha256: str
    """Hex sha256 of the file."""
    num_bytes: int
    """File size."""
    num_records: int
    """Samples in it (repeats included)."""
    tokens: int
    """Estimated tokens of its samples."""
    keys: list[str]
    """Sample keys in write order."""
    record_ids: list[str]
    """Distinct record ids in it, sorted."""
    modality_counts: dict[str, int]
    """Samples per modality."""
    source_counts: dict[str, int]
    """Samples per source."""
    modality_tokens: dict[str, int]
    """Tokens per modality."""
    source_tokens: dict[str, int]
    """Tokens per source."""


@dataclass(frozen=True, kw_only=True)
class StageShards:
    """Result of sharding one data mix (also written as the manifest)."""

    mix: str
    """Data mix name."""
    manifest_path: str
    """The manifest JSON."""
    shards: list[ShardInfo]
    """Shards in order."""
    planned: dict[str, float]
    """Planned token share per modality (and per ``modality/source`` where the mix splits one)."""
    realized: dict[str, float]
    """Realized token share, same keys."""
    realized_sources: dict[str, float]
    """Realized token share per source."""
    total_tokens: int
    """Tokens over all shards."""
    num_records: int
    """Samples over all shards (repeats included)."""
    num_unique_records: int
    """Distinct records used."""
    unused_record_ids: list[str] = field(default_factory=list)
    """Records not sampled (their modality has no share in the mix)."""

    def manifest_rows(self) -> list[dict]:
        """One row per shard in the columns of the ``manifest`` expectation suite."""
        return [manifest_row(self.mix, s) for s in self.shards]


def manifest_row(mix: str, shard: ShardInfo) -> dict:
    """``shard`` as a row of the ``manifest`` expectation suite."""
    return {
        "shard": shard.name,
        "mix": mix,
        "sha256": shard.sha256,
        "num_bytes": shard.num_bytes,
        "num_records": shard.num_records,
        "tokens": shard.tokens,
    }


def quarantine_bad_shards(mix: str, shards: Sequence[ShardInfo]) -> list[ShardInfo]:
    """The shards whose manifest rows pass the ``manifest`` suite; each other one is moved into
    ``quarantine/`` beside it and listed in ``quarantine/shards.jsonl`` with its reasons, so that no
    manifest lists it and no reader finds it under a shard name. ValueError naming the mix when none pass."""
    if not shards:
        return []
    folder = Path(shards[0].path).parent / "quarantine"
    report = quarantine_failures(
        "manifest", list(shards), [manifest_row(mix, s) for s in shards], quarantine_path=folder / "shards.jsonl"
    )
    passed = {id(s) for s in report.passed}
    for shard in shards:
        if id(shard) not in passed:
            os.replace(shard.path, folder / shard.name)
    if not report.passed:
        raise ValueError(f"mix {mix}: every shard failed the manifest suite, see {report.quarantine_path}")
    return report.passed


# ---- token estimates ---------------------------------------------------------------------------------


def count_text_tokens(text: str, tokenizer: Tokenizer | None = None) -> int:
    """Tokens of ``text``: ``tokenizer(text)`` (an int or a list of ids) or, by default, words + punctuation."""
    if tokenizer is None:
        return len(WORD_RE.findall(text))
    out = tokenizer(text)
    return out if isinstance(out, int) else len(out)


def image_tokens(path: str, config: ShardConfig) -> int:
    """Tokens of the image once resized by ``fit_size`` within the config's limits (reads the header only)."""
    return _cached_image_tokens(path, _file_version(path), config.image_min_tokens, config.image_max_tokens)


def _file_version(path: str) -> tuple[int, int]:
    """(mtime ns, size): a changed file is a new cache key."""
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=1 << 16)  # bounded: a worker process curates many runs
def _cached_image_tokens(path: str, version: tuple[int, int], min_tokens: int, max_tokens: int) -> int:
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
    return num_tokens(*fit_size(height, width, min_tokens, max_tokens))


#: Video plans are made under one lock: the curate flow shards its mixes in threads at once, and each
#: thread missing the cache for the same videos decoded them again (the demo: 172 decodes of 32 videos).
_PLAN_LOCK = threading.Lock()


def video_plan(path: str, slow_fast: str) -> tuple[int, str]:
    """(tokens, plan JSON) of the video under the Slow-Fast preset; decoded once per process and version."""
    with _PLAN_LOCK:
        return _cached_plan(path, _file_version(path), slow_fast)


@functools.lru_cache(maxsize=1 << 12)
def _cached_plan(path: str, version: tuple[int, int], slow_fast: str) -> tuple[int, str]:
    from keye_model.slow_fast import SlowFastConfig, plan_video

    plan = plan_video(path, SlowFastConfig.preset(slow_fast))
    return plan.total_tokens, plan.to_json()


def estimate_samples(records: Sequence[Record], config: ShardConfig, tokenizer: Tokenizer | None = None):
    """``{record id: Sample}`` (repeat 0) with token estimates. Each image's header is read and each video
    planned (decoded) once per process, however many records and mixes show it (easy-vqa: ~12 records
    an image; curation estimates every mix from the same records)."""
    samples = {}
    for record in records:
        tokens = count_text_tokens(record.question + "\n" + record.answer, tokenizer)
        plan_json = None
        if record.modality == "image":
            tokens += image_tokens(record.media_path, config)
        elif record.modality == "video":
            plan_tokens, plan_json = video_plan(record.media_path, config.slow_fast)
            tokens += plan_tokens
        samples[record.id] = Sample(key=record.id, record=record, tokens=max(1, tokens), plan_json=plan_json)
    return samples


# ---- mix sampler -------------------------------------------------------------------------------------


def _buckets(mix: DataMix, samples: dict[str, Sample]) -> dict[str, tuple[float, list[Sample]]]:
    """``{bucket name: (planned share, samples)}``; bucket names are ``modality`` or ``modality/source``."""
    buckets = {}
    for modality, share in mix.planned().items():
        pool = [s for s in samples.values() if s.record.modality == modality and mix.takes(s.record.task)]
        if not pool:
            tasks = f" of tasks {list(mix.tasks)}" if mix.tasks else ""
            raise ValueError(
                f"mix {mix.name}: it plans {share:.0%} {modality} tokens but there are no {modality} records{tasks}"
            )
        sources = mix.source_ratios.get(modality)
        if not sources:
            buckets[modality] = (share, pool)
            continue
        for source, source_share in sources.items():
            picked = [s for s in pool if s.record.source == source]
            if source_share > 0 and not picked:
                raise ValueError(f"mix {mix.name}: it plans {modality} from {source!r} but that source has no records")
            if source_share > 0:
                buckets[f"{modality}/{source}"] = (share * source_share, picked)
    return buckets


def sample_mix(
    samples: dict[str, Sample], mix: DataMix, *, target_tokens: int | None = None, seed: int = 0
) -> list[Sample]:
    """Choose (and repeat) samples so each bucket's token share is within ``mix.tolerance`` of plan.

    Returns samples in choice order, repeats keyed ``<id>__r<n>``. ValueError when a planned modality or
    source has no records, or the mix cannot be met within MAX_SAMPLES picks.
    """
    buckets = _buckets(mix, samples)
    rng = random.Random(seed)
    if target_tokens is None:  # every record once: the bucket needing the largest total sets it
        target_tokens = max(sum(s.tokens for s in pool) / share for share, pool in buckets.values())
    orders = {name: [] for name in buckets}
    cycles = Counter()
    tokens = Counter()
    chosen: list[Sample] = []
    total = 0

    def within() -> bool:
        if total < target_tokens:
            return False
        by_modality = Counter()
        for name, (share, _) in buckets.items():
            if abs(tokens[name] / total - share) > mix.tolerance:
                return False
            by_modality[name.split("/")[0]] += tokens[name]
        return all(abs(by_modality[m] / total - p) <= mix.tolerance for m, p in mix.planned().items())

    while not within():
        if len(chosen) >= MAX_SAMPLES:
            raise ValueError(f"mix {mix.name}: cannot meet its shares within {MAX_SAMPLES} samples")
        scale = max(target_tokens, total)
        name = max(buckets, key=lambda b: buckets[b][0] * scale - tokens[b])
        if not orders[name]:
            pool = sorted(buckets[name][1], key=lambda s: s.key)
            rng.shuffle(pool)
            orders[name] = pool[::-1]
            cycles[name] += 1
        sample = orders[name].pop()
        repeat = cycles[name] - 1
        if repeat:
            sample = dataclasses.replace(sample, key=f"{sample.key}__r{repeat}", repeat=repeat)
        chosen.append(sample)
        tokens[name] += sample.tokens
        total += sample.tokens
    keys = [s.key for s in chosen]
    assert len(set(keys)) == len(keys), "sample keys collide"
    return chosen


def shares(samples: Sequence[Sample], of: Callable[[Sample], str]) -> dict[str, float]:
    """Token share per ``of(sample)``, sorted by name."""
    tokens = _tally(samples, of, tokens=True)
    total = sum(tokens.values()) or 1
    return {name: tokens[name] / total for name in sorted(tokens)}


# ---- writing -----------------------------------------------------------------------------------------


def _entry(sample: Sample) -> dict[str, bytes | str]:
    record = sample.record
    meta = {**vars(record), "tokens": sample.tokens, "repeat": sample.repeat}
    entry: dict[str, bytes | str] = {"__key__": sample.key, "json": json.dumps(meta, sort_keys=True).encode()}
    if record.media_path is not None:
        suffix = Path(record.media_path).suffix.lower().lstrip(".")
        suffix = {"jpeg": "jpg", "tif": "tiff"}.get(suffix, suffix)
        if not suffix or suffix in ("json", "plan") or "." in suffix:
            raise ValueError(f"record {record.id}: media file {record.media_path!r} has no usable suffix")
        entry[suffix] = Path(record.media_path).read_bytes()
    if sample.plan_json is not None:
        entry["plan.json"] = sample.plan_json.encode()
    return entry


def _tally(samples: Sequence[Sample], of: Callable[[Sample], str], *, tokens: bool) -> dict[str, int]:
    """Samples (or their tokens) per ``of(sample)``, sorted by name."""
    counts = Counter()
    for sample in samples:
        counts[of(sample)] += sample.tokens if tokens else 1
    return dict(sorted(counts.items()))


def _write_shard(path: Path, entries: list[tuple[Sample, dict]], config: ShardConfig, on_sample) -> ShardInfo:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb", buffering=2**20) as raw:
        hashing = TarSink(raw)
        for sample, entry in entries:
            for field_name in sorted(k for k in entry if k != "__key__"):
                hashing.add(f"{sample.key}.{field_name}", entry[field_name])
            if on_sample is not None:
                on_sample(sample.key)
        sha256 = hashing.finish()
        raw.flush()
        if config.fsync:
            os.fsync(raw.fileno())
    os.replace(partial, path)
    samples = [s for s, _ in entries]
    modality, source = (lambda s: s.record.modality), (lambda s: s.record.source)
    return ShardInfo(
        path=str(path.resolve()),
        name=path.name,
        sha256=sha256,
        num_bytes=hashing.num_bytes,
        num_records=len(samples),
        tokens=sum(s.tokens for s in samples),
        keys=[s.key for s in samples],
        record_ids=sorted({s.record.id for s in samples}),
        modality_counts=_tally(samples, modality, tokens=False),
        source_counts=_tally(samples, source, tokens=False),
        modality_tokens=_tally(samples, modality, tokens=True),
        source_tokens=_tally(samples, source, tokens=True),
    )


def _clear_mix(mix_dir: Path, mix: str) -> None:
    """Remove a previous run's manifest first (so its shards stop counting), then its shards, partials and
    quarantined shards."""
    old = [
        mix_dir / "manifest.json",
        *mix_dir.glob(f"{mix}-*.tar"),
        *mix_dir.glob(".*.partial"),
        *mix_dir.glob(f"quarantine/{mix}-*.tar"),
        *mix_dir.glob("quarantine/shards.jsonl"),
    ]
    for path in old:
        if path.exists():
            path.unlink()
    if len(old) > 1:
        log.info("mix %s: removed %d files of an earlier run from %s", mix, len(old), mix_dir)


def read_entries(samples: Sequence[Sample], depth: int = 16):
    """Yield (sample, entry) in order while two threads read the next ``depth`` samples' files."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="shard-read") as pool:
        window = deque()
        for sample in samples:
            window.append((sample, pool.submit(_entry, sample)))
            if len(window) > depth:
                ready, future = window.popleft()
                yield ready, future.result()
        while window:
            ready, future = window.popleft()
            yield ready, future.result()


def write_shards(samples: Sequence[Sample], config: ShardConfig, on_sample: Callable[[str], None] | None = None):
    """Write ``samples`` in order into ``<out_dir>/<mix>/<mix>-NNNNNN.tar``; returns [ShardInfo].

    ``on_sample(key)`` is called after each sample is written (progress reporting).
    """
    mix_dir = Path(config.out_dir) / config.mix
    mix_dir.mkdir(parents=True, exist_ok=True)
    _clear_mix(mix_dir, config.mix)
    shards, batch, batch_bytes = [], [], 0

    def flush() -> None:
        nonlocal batch, batch_bytes
        if batch:
            shards.append(_write_shard(mix_dir / f"{config.mix}-{len(shards):06d}.tar", batch, config, on_sample))
            batch, batch_bytes = [], 0

    for sample, entry in read_entries(samples):
        size = sum(len(v) + 512 for k, v in entry.items() if k != "__key__")
        if batch and (len(batch) >= config.max_records_per_shard or batch_bytes + size > config.max_bytes_per_shard):
            flush()
        batch.append((sample, entry))
        batch_bytes += size
    flush()
    return shards


def _write_json_atomically(path: Path, data: dict) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def _relative_paths(result: StageShards) -> dict:
    """The manifest's copy of ``result``: paths relative to the manifest's folder, so a run folder that is
    copied or moved reads its own shards (``tasks.layout.read_mix_shards`` resolves them there)."""
    data = dataclasses.asdict(result)
    folder = Path(result.manifest_path).parent
    data["manifest_path"] = Path(result.manifest_path).name
    for shard in data["shards"]:
        shard["path"] = str(Path(shard["path"]).relative_to(folder))
    return data


def shard_stage(
    records: Sequence[Record],
    mix: DataMix,
    config: ShardConfig,
    *,
    tokenizer: Tokenizer | None = None,
    on_sample: Callable[[str], None] | None = None,
) -> StageShards:
    """Estimate tokens, sample ``mix``, write shards and the mix's manifest; returns what was written."""
    estimated = estimate_samples(records, config, tokenizer)
    chosen = sample_mix(estimated, mix, target_tokens=config.target_tokens, seed=config.seed)
    random.Random(config.seed).shuffle(chosen)  # spread modalities over shards
    shards = quarantine_bad_shards(config.mix, write_shards(chosen, config, on_sample))
    kept = {key for s in shards for key in s.keys}
    chosen = [s for s in chosen if s.key in kept]  # counts and shares of what the manifest lists
    split = {m for m in mix.source_ratios}

    def bucket(sample: Sample) -> str:
        modality = sample.record.modality
        return f"{modality}/{sample.record.source}" if modality in split else modality

    planned = {
        **mix.planned(),
        **{
            f"{m}/{src}": mix.modality_ratios[m] * r
            for m, table in mix.source_ratios.items()
            for src, r in table.items()
        },
    }
    realized = {**shares(chosen, lambda s: s.record.modality), **shares(chosen, bucket)}
    used = {s.record.id for s in chosen}
    result = StageShards(
        mix=config.mix,
        manifest_path=str((Path(config.out_dir) / config.mix / "manifest.json").resolve()),
        shards=shards,
        planned=planned,
        realized={k: realized.get(k, 0.0) for k in planned},
        realized_sources=shares(chosen, lambda s: s.record.source),
        total_tokens=sum(s.tokens for s in chosen),
        num_records=len(chosen),
        num_unique_records=len(used),
        unused_record_ids=sorted(r.id for r in records if r.id not in used),
    )
    worst = max(abs(result.realized[k] - planned[k]) for k in planned)
    _write_json_atomically(
        Path(result.manifest_path),
        {
            **_relative_paths(result),
            "mix_spec": mix.to_dict(),
            "config": {**dataclasses.asdict(config), "out_dir": ".."},  # relative, as the shard paths
            "max_share_error": worst,
            "within_tolerance": worst <= mix.tolerance,
        },
    )
    log.info(
        "mix %s: %d samples (%d records) in %d shards, %d tokens, worst share error %.4f",
        config.mix,
        len(chosen),
        len(used),
        len(shards),
        result.total_tokens,
        worst,
    )
    return result


@task(name="write-stage-shards", task_run_name="shard-{config.mix}", retries=2, retry_delay_seconds=5)
def write_stage_shards(records: list[Record], mix: DataMix, config: ShardConfig) -> StageShards:
    """Prefect entry point for ``shard_stage`` (default word-count token estimate)."""
    return shard_stage(records, mix, config)
