"""Replaying a checkpoint from its lineage: the recorded stages that made it, trained again in a new run folder.

A checkpoint artifact carries its stage's run config, with paths relative to the run folder, and the sha256
of each tokenizer file (``tasks.train.replay_metadata``); its ``trained_from`` edges name the shards and
checkpoints it was trained from. ``plan_replay`` walks that ancestry from the checkpoint: its own stage,
then each input checkpoint's stage, recursively, unless the new folder already holds that checkpoint with
the recorded sha256. ``replay`` then puts the tokenizer and shards in the new folder (linked or copied,
each checked against its recorded sha256: a file that is missing or differs stops the replay before any
training), trains each stage with its recorded config re-rooted there (same stage spec, seed, shards and
order), and compares the new weights' sha256 (``model.safetensors``) with the recorded one.

Generated post-training data (LongCoT, pairs) is not generated again: it is read from the shards recorded.
Stages run in this process (one rank); on a CPU the replay is bit-identical with the same code (a change
to the model or runner since, even one that only reorders floating-point sums, changes the weights).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from keye_model.training.run_config import RunConfig
from tasks.lineage import LineageStore
from tasks.train import checkpoint_artifact, finished_result, train_stage

log = logging.getLogger(__name__)

#: Run-config fields that hold one path, and those that hold several.
PATH_FIELDS = ("output_dir", "tokenizer_dir", "init_checkpoint", "reward_model_checkpoint", "vision_init", "llm_init")
PATHS_FIELDS = ("shards", "expert_checkpoints")


@dataclass(frozen=True, kw_only=True)
class RecordedStage:
    """One stage of a replay, as lineage recorded it."""

    artifact_id: str
    """The checkpoint artifact the stage made."""
    stage: str
    """The stage's name."""
    sha256: str
    """Recorded sha256 of its ``model.safetensors``."""
    run_config: dict
    """Its run config as JSON, paths relative to the run folder (``tasks.train.replay_metadata``)."""
    tokenizer_sha256s: dict
    """File name -> sha256 of its tokenizer's files."""
    source_roots: tuple[str, ...]
    """Run folders to take its tokenizer and shards from, in order: the lineage file's, then the recorded one."""
    shard_uris: dict
    """Shard sha256 -> the URI its ``trained_from`` shard artifact was recorded at."""
    reuse: bool
    """True when the new folder already holds this checkpoint with the recorded sha256: not trained again."""


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _recorded(store: LineageStore, artifact_id: str) -> tuple[str, str, dict]:
    row = store.con.execute(
        "SELECT kind, uri, sha256, metadata FROM artifacts WHERE artifact_id = ?", [artifact_id]
    ).fetchone()
    if row is None:
        raise ValueError(f"artifact {artifact_id} is referenced by lineage edges but was never recorded")
    kind, uri, sha256, metadata = row
    if kind != "checkpoint":
        raise ValueError(f"artifact {artifact_id} is a {kind}, not a checkpoint: only checkpoints can be replayed")
    return uri, sha256, json.loads(metadata) if isinstance(metadata, str) else (metadata or {})


def _check_replayable(artifact_id: str, stage: str, uri: str, metadata: dict) -> None:
    if "run_config" not in metadata:
        raise ValueError(
            f"checkpoint {artifact_id} (stage {stage}, {uri}) was recorded without its run config "
            "(before replay was supported): train it again to make it replayable"
        )
    config = metadata["run_config"]
    if not metadata.get("tokenizer_sha256s"):
        raise ValueError(
            f"checkpoint {artifact_id} (stage {stage}): lineage records no tokenizer files for it "
            f"({config['tokenizer_dir']} was gone when it was recorded); it cannot be replayed"
        )
    if config["output_dir"] != f"stages/{stage}":
        raise ValueError(
            f"checkpoint {artifact_id}: stage {stage} was trained in {config['output_dir']}, outside a "
            "run folder's stages/ layout; only pipeline stages can be replayed"
        )


def plan_replay(db: str | Path, checkpoint: str, run_dir: str | Path) -> list[RecordedStage]:
    """The stages to replay for ``checkpoint`` (an artifact id, URI or path in ``db``), inputs first.

    The target stage is always in the plan (it is what is compared); an input checkpoint is reused when
    ``run_dir`` already holds it with the recorded sha256, refused when it holds a different one.
    """
    new_root = Path(run_dir).resolve()
    db_root = Path(db).resolve().parent
    plan: list[RecordedStage] = []
    with LineageStore(db, read_only=True) as store:

        def visit(artifact_id: str, target: bool) -> None:
            if any(s.artifact_id == artifact_id for s in plan):
                return  # a diamond (fusion's experts share stage 2): one replay
            uri, sha256, metadata = _recorded(store, artifact_id)
            stage = metadata.get("stage", "?")
            here = new_root / "stages" / stage / "checkpoint"
            if target and here.parent.exists():
                raise ValueError(
                    f"{here.parent} exists: replay stage {stage} into a folder without it, "
                    "so that it is trained again rather than found finished"
                )
            # hashed, not read from its result.json: a checkpoint copied in by hand is taken by its bytes
            found = file_sha256(here / "model.safetensors") if (here / "model.safetensors").exists() else None
            if found is not None and found != sha256:
                raise ValueError(
                    f"{here} holds stage {stage} with weights sha256 {found}, not the recorded {sha256}; "
                    "replay into an empty folder"
                )
            reuse = found == sha256  # then what it was trained from does not matter here
            config = metadata.get("run_config", {})
            parents = store.ancestors(artifact_id, max_depth=1)
            if not reuse:
                _check_replayable(artifact_id, stage, uri, metadata)
                spec = config["stage"]
                by_stage = {}
                for parent in parents:
                    if parent.kind == "checkpoint":
                        by_stage[_recorded(store, parent.artifact_id)[2].get("stage")] = parent.artifact_id
                for name in (*spec["inputs"], *([spec["reward_model"]] if spec.get("reward_model") else [])):
                    if name not in by_stage:
                        raise ValueError(
                            f"checkpoint {artifact_id} (stage {stage}) starts from stage {name}, but lineage "
                            f"records no checkpoint of {name} among its inputs"
                        )
                    visit(by_stage[name], target=False)
            recorded_root = str(Path(uri).parents[2]) if uri.startswith("/") else None
            plan.append(
                RecordedStage(
                    artifact_id=artifact_id,
                    stage=stage,
                    sha256=sha256,
                    run_config=config,
                    tokenizer_sha256s=metadata.get("tokenizer_sha256s", {}),
                    source_roots=tuple(dict.fromkeys(r for r in (str(db_root), recorded_root) if r)),
                    shard_uris={p.sha256: p.uri for p in parents if p.kind == "shard" and p.sha256},
                    reuse=reuse,
                )
            )

        visit(store.resolve(checkpoint), target=True)
    return plan


def rooted(config: dict, root: Path) -> RunConfig:
    """A recorded run config with its relative paths joined to ``root`` (absolute ones, such as a
    ``vision_init`` outside the run folder, are kept)."""
    data = dict(config)
    for key in PATH_FIELDS:
        if data.get(key) is not None:
            data[key] = str(root / data[key])
    for key in PATHS_FIELDS:
        data[key] = [str(root / p) for p in data[key]]
    return RunConfig.from_json(json.dumps(data))


def place_file(rel: str, sha256: str, candidates: list[Path], new_root: Path, what: str) -> None:
    """Put ``new_root/rel`` in place from the first candidate that exists, after checking its sha256.

    The first copy found must match: a run folder whose file differs from its lineage is refused, not
    passed over for another copy, since it says the recorded data changed."""
    dest = new_root / rel
    if dest.exists():
        if file_sha256(dest) != sha256:
            raise ValueError(f"{what} {dest} is already in the new run folder with another sha256 than the recorded")
        return
    for source in dict.fromkeys(c.resolve() for c in candidates):
        if not source.is_file():
            continue
        found = file_sha256(source)
        if found != sha256:
            raise ValueError(f"{what} {source} differs from lineage: sha256 {found}, recorded {sha256}; not replayed")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, dest)  # shards are large and never written in place: a hard link costs nothing
        except OSError:
            shutil.copy2(source, dest)
        return
    looked = ", ".join(str(c) for c in candidates)
    raise ValueError(f"{what} {rel} (sha256 {sha256}) is missing: not found at {looked}; not replayed")


def place_inputs(stage: RecordedStage, new_root: Path) -> None:
    """The stage's tokenizer files and shards in ``new_root``, each as lineage recorded it."""
    config, roots = stage.run_config, [Path(r) for r in stage.source_roots]
    tokenizer = config["tokenizer_dir"]
    for name, sha256 in sorted(stage.tokenizer_sha256s.items()):
        base = [Path(tokenizer)] if Path(tokenizer).is_absolute() else [r / tokenizer for r in roots]
        place_file(str(Path(tokenizer) / name), sha256, [b / name for b in base], new_root, "tokenizer file")
    for rel, sha256 in zip(config["shards"], config["shard_sha256s"]):
        candidates = [r / rel for r in roots]
        if sha256 in stage.shard_uris:
            candidates.append(Path(stage.shard_uris[sha256].removeprefix("file://")))
        place_file(rel, sha256, candidates, new_root, f"stage {stage.stage} shard")
    for key in ("vision_init", "llm_init"):  # outside the run folder: not copied, must still be there
        if config.get(key) and not (new_root / config[key]).exists():
            raise ValueError(f"stage {stage.stage} started from {key} {config[key]}, which does not exist")


@dataclass(frozen=True, kw_only=True)
class ReplayedStage:
    """How one stage of a replay came out."""

    stage: str
    """The stage's name."""
    recorded_sha256: str
    """Weights sha256 lineage recorded."""
    replayed_sha256: str
    """Weights sha256 in the new run folder."""
    reused: bool
    """True when the checkpoint was already in the new folder and not trained again."""
    checkpoint_dir: str
    """The checkpoint in the new run folder."""

    @property
    def identical(self) -> bool:
        return self.recorded_sha256 == self.replayed_sha256


def replay(db: str | Path, checkpoint: str, run_dir: str | Path) -> list[ReplayedStage]:
    """Train the stages that made ``checkpoint`` again in ``run_dir``; one result per stage, the target last.

    All inputs of every stage are placed and checked before the first stage trains."""
    new_root = Path(run_dir).resolve()
    plan = plan_replay(db, checkpoint, new_root)
    for stage in plan:
        if not stage.reuse:
            place_inputs(stage, new_root)
    results = []
    for stage in plan:
        out = new_root / "stages" / stage.stage
        if not stage.reuse:
            log.info("replaying stage %s (checkpoint %s) in %s", stage.stage, stage.artifact_id, out)
            train_stage(rooted(stage.run_config, new_root))
        if not stage.reuse and finished_result(out) is None:
            raise RuntimeError(f"stage {stage.stage}: the replay wrote no {out / 'result.json'}")
        # a reused checkpoint was hashed by plan_replay; a trained one is hashed once and kept in result.json
        sha256 = stage.sha256 if stage.reuse else checkpoint_artifact(finished_result(out), "replay").sha256
        results.append(
            ReplayedStage(
                stage=stage.stage,
                recorded_sha256=stage.sha256,
                replayed_sha256=sha256,
                reused=stage.reuse,
                checkpoint_dir=str(out / "checkpoint"),
            )
        )
    return results
