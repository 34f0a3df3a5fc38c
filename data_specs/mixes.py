"""Data mixes: the planned token share of each modality (and, optionally, of each source) of a named mix.

A mix is planned in TOKENS, not samples: one long video can outweigh a hundred captions, and the report
states the stage-3 annealing mix that way (24% video, 50% image, 26% text, SPEC.md section 3). The
sharder (``tasks/shards.py``) realizes a mix by choosing and repeating records and writes planned
vs realized shares into each mix's manifest. A training stage names its mix
(``StageSpec.data_mix``); "mix" is always data, "stage" always training.

Worked example: stage 3 with 10,000 planned tokens wants 2,400 video, 5,000 image and 2,600 text tokens.
With ``source_ratios={"image": {"easy-vqa": 0.2, "skimage": 0.8}}`` the 5,000 image tokens split into
1,000 from easy-vqa and 4,000 from skimage; a modality without an entry takes its sources as they come.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from data_specs.schemas import MODALITIES

#: How far a ratio table may sum from 1 (floating point slack, not a tolerance on the mix).
SUM_EPS = 1e-6


def _check_ratios(what: str, ratios: dict[str, float]) -> None:
    if not ratios:
        raise ValueError(f"{what}: no ratios given")
    for name, value in ratios.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{what}: ratio of {name!r} must be a finite number >= 0, got {value!r}")
    total = sum(ratios.values())
    if abs(total - 1.0) > SUM_EPS:
        raise ValueError(f"{what}: ratios must sum to 1, got {total:.6f} ({ratios})")


@dataclass(frozen=True, kw_only=True)
class DataMix:
    """Planned token shares of one data mix (a stage trains on the mix its ``StageSpec.data_mix`` names)."""

    name: str
    """Mix name (``image_text``, ``multitask``, ``annealing``...); shards go to ``shards/<name>/``."""
    modality_ratios: dict[str, float]
    """Share of tokens per modality (keys from ``MODALITIES``); sums to 1. A zero share may be omitted."""
    source_ratios: dict[str, dict[str, float]] = field(default_factory=dict)
    """Optional split of a modality's tokens over its sources, e.g. ``{"image": {"skimage": 1.0}}``;
    each inner table sums to 1 and names a modality that has a positive share."""
    tolerance: float = 0.01
    """Largest allowed |realized - planned| token share per modality (and per source), absolute."""
    tasks: tuple[str, ...] = ()
    """Record tasks the mix draws from (``caption``, ``vqa`` ...); empty: every task."""

    def __post_init__(self) -> None:
        what = f"data mix {self.name!r}"
        unknown = set(self.modality_ratios) - set(MODALITIES)
        if unknown:
            raise ValueError(f"{what}: unknown modalities {sorted(unknown)}; expected {MODALITIES}")
        _check_ratios(what, self.modality_ratios)
        for modality, table in self.source_ratios.items():
            if self.modality_ratios.get(modality, 0.0) <= 0:
                raise ValueError(f"{what}: source ratios given for {modality!r}, which has no share")
            _check_ratios(f"{what}, {modality} sources", table)
        if not 0 < self.tolerance < 0.5:
            raise ValueError(f"{what}: tolerance must be in (0, 0.5), got {self.tolerance}")

    def planned(self) -> dict[str, float]:
        """Positive modality shares only, in ``MODALITIES`` order."""
        return {m: float(self.modality_ratios[m]) for m in MODALITIES if self.modality_ratios.get(m, 0) > 0}

    def to_dict(self) -> dict:
        """Plain JSON form (manifests, Prefect parameters)."""
        return {
            "name": self.name,
            "modality_ratios": dict(self.modality_ratios),
            "source_ratios": {m: dict(t) for m, t in self.source_ratios.items()},
            "tolerance": self.tolerance,
            "tasks": list(self.tasks),
        }

    @classmethod
    def from_dict(cls, data: dict) -> DataMix:
        return cls(**{**data, "tasks": tuple(data.get("tasks", ()))})

    def takes(self, task: str) -> bool:
        """Whether records of ``task`` may enter this mix."""
        return not self.tasks or task in self.tasks


def stage1_mix() -> DataMix:
    """Cross-modal alignment: image-text pairs only (SPEC.md section 3)."""
    return DataMix(name="image_text", modality_ratios={"image": 1.0})


def image_captions_mix() -> DataMix:
    """Vision pre-training (a ViT from random weights, the ``siglip`` objective): images and their captions."""
    return DataMix(name="image_captions", modality_ratios={"image": 1.0}, tasks=("caption",))


def stage2_mix() -> DataMix:
    """Multi-task pre-training. The report gives no ratios; ours leans on images, as its data list does."""
    return DataMix(name="multitask", modality_ratios={"video": 0.2, "image": 0.6, "text": 0.2})


def stage3_mix() -> DataMix:
    """Annealing: the report's token mix, 24% video, 50% image, 26% text."""
    return DataMix(name="annealing", modality_ratios={"video": 0.24, "image": 0.50, "text": 0.26})


def expert_mix() -> DataMix:
    """The fusion expert's mix (our choice): vision-heavy, so merging it with the annealed model adds
    something the annealing mix under-weights, as the report's OCR expert does."""
    return DataMix(name="vision_expert", modality_ratios={"image": 0.8, "video": 0.2})


def sft_mix() -> DataMix:
    """Supervised fine-tuning over instruction data (our choice; the report gives none)."""
    return DataMix(name="sft", modality_ratios={"video": 0.2, "image": 0.5, "text": 0.3})


def alignment_rl_mix() -> DataMix:
    """Alignment RL prompts: instruction following over all modalities (our choice)."""
    return DataMix(name="alignment_rl", modality_ratios={"video": 0.1, "image": 0.4, "text": 0.5})


#: Mixes sampled from curated records, by the name a StageSpec's ``data_mix`` uses. The ``preference``
#: and ``longcot`` sets are generated inside the post-training chain and take the mix they come with.
PRESETS = {
    "image_captions": image_captions_mix,
    "image_text": stage1_mix,
    "multitask": stage2_mix,
    "annealing": stage3_mix,
    "vision_expert": expert_mix,
    "sft": sft_mix,
    "alignment_rl": alignment_rl_mix,
}
GENERATED = ("preference", "longcot", "rl_prompts", "reward_pairs", "reward_anneal")


def get_mix(name: str) -> DataMix:
    """The preset mix of that name; ValueError naming the known mixes otherwise."""
    if name not in PRESETS:
        raise ValueError(f"no data mix named {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]()
