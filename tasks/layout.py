"""Where a pipeline run keeps its files: one folder, the same layout for every phase.

    <run_dir>/lineage.duckdb          the lineage store (one writer: the flow process)
    <run_dir>/tokenizer/              the tokenizer every stage uses
    <run_dir>/data/<source>/          collected media; records.jsonl, quarantine.jsonl
    <run_dir>/shards/<mix>/           WebDataset shards and manifest.json of each data mix
    <run_dir>/stages/<stage>/         a stage's deepspeed/, checkpoint/, metrics.jsonl, result.json
    <run_dir>/posttrain/              data made inside the post-training chain (LongCoT, pairs)

Phases find each other's outputs here (a manifest, a result.json), so each phase flow runs alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tasks.lineage import artifact_id


@dataclass(frozen=True)
class RunLayout:
    run_dir: str

    @property
    def root(self) -> Path:
        return Path(self.run_dir).resolve()

    @property
    def lineage_db(self) -> str:
        return str(self.root / "lineage.duckdb")

    @property
    def tokenizer_dir(self) -> str:
        return str(self.root / "tokenizer")

    @property
    def data_dir(self) -> str:
        return str(self.root / "data")

    @property
    def records_path(self) -> str:
        return str(self.root / "data" / "records.jsonl")

    @property
    def quarantine_path(self) -> str:
        return str(self.root / "data" / "quarantine.jsonl")

    @property
    def shards_dir(self) -> str:
        return str(self.root / "shards")

    def stage_dir(self, stage: str) -> str:
        return str(self.root / "stages" / stage)

    def checkpoint(self, stage: str) -> str:
        return str(self.root / "stages" / stage / "checkpoint")

    @property
    def posttrain_dir(self) -> str:
        return str(self.root / "posttrain")


@dataclass(frozen=True)
class MixShards:
    """The shards of one data mix as its manifest lists them, with their lineage ids."""

    mix: str
    manifest_path: str
    paths: tuple[str, ...]
    artifact_ids: tuple[str, ...]
    sha256s: tuple[str, ...]
    num_bytes: tuple[int, ...]


def read_mix_shards(shards_dir: str, mix: str) -> MixShards:
    """The shards ``<shards_dir>/<mix>/manifest.json`` lists, as files beside that manifest.

    Manifests hold paths relative to their folder; one written with absolute paths (before this was so)
    is read by file name in the same folder, so a copied or moved run folder never reads the original's
    shards. A path that leaves the folder is refused.
    """
    manifest = Path(shards_dir) / mix / "manifest.json"
    if not manifest.exists():
        raise FileNotFoundError(f"no shards for data mix {mix!r}: {manifest} is missing (run the curate flow first)")
    data = json.loads(manifest.read_text())
    folder = manifest.parent.resolve()
    paths = []
    for entry in data["shards"]:
        recorded = Path(entry["path"])
        path = (folder / (recorded.name if recorded.is_absolute() else recorded)).resolve()
        if path.parent != folder:
            raise ValueError(f"manifest {manifest}: shard path {entry['path']!r} is not a file beside the manifest")
        paths.append(str(path))
    paths = tuple(paths)
    ids = tuple(artifact_id("shard", p, s["sha256"]) for p, s in zip(paths, data["shards"]))
    return MixShards(
        mix=mix,
        manifest_path=str(manifest),
        paths=paths,
        artifact_ids=ids,
        sha256s=tuple(s["sha256"] for s in data["shards"]),
        num_bytes=tuple(s["num_bytes"] for s in data["shards"]),
    )
