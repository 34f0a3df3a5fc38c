"""Training stages as data (SPEC.md sections 3-4): what each stage trains, on what, for how long.

One ``StageSpec`` per stage, built once in ``keye_8b_stages``; smaller presets derive from it by
``dataclasses.replace`` on the fields that make a stage run on 2 CPU cores (steps, batch, context,
learning rate): see ``data_specs.presets``, which bundles stages with the model, data and evaluation
sizes. A ``StageSpec`` is the runner's whole input about a stage: its objective (looked up in the
objective registry, ``keye_model.training.objectives``), what it merges (``fusion``), which stage's
checkpoint judges its rollouts (``reward_model``). Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from data_specs.mixes import GENERATED

MODULE_GROUPS = ("vision", "projector", "llm")
#: Names of the objectives in the registry (``keye_model.training.objectives``; a test checks they agree).
OBJECTIVES = ("lm", "weighted_lm", "mpo", "reward", "gspo", "reward_gspo", "siglip", "fusion")
#: The objectives that sample rollouts and so take ``RLSpec`` settings.
RL_OBJECTIVES = ("gspo", "reward_gspo")
#: The objectives that train the pairwise judge (Keye-Reward): its SFT (and annealing) and its RL.
JUDGE_OBJECTIVES = ("reward", "reward_gspo")
#: The objectives that train the ViT (and projector) alone, against captions: their checkpoints cannot answer yet.
VISION_OBJECTIVES = ("siglip",)
PHASES = ("pretrain", "posttrain")
FUSION_METHODS = ("average", "task_arithmetic", "ties")
#: Progressive hint levels L1..L5 (SPEC.md section 4): concept, strategy, tool/formula, first step, solution.
NUM_HINT_LEVELS = 5


@dataclass(frozen=True, kw_only=True)
class OptimizerSpec:
    """AdamW with linear warm-up and cosine decay to ``min_lr_ratio * lr``."""

    lr: float = 1e-5
    """Peak learning rate (the report gives none: our choice, per stage)."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam betas."""
    warmup_steps: int = 0
    """Linear warm-up steps from 0 to ``lr``."""
    min_lr_ratio: float = 0.1
    """Cosine floor as a fraction of ``lr``; 1.0 gives a constant schedule."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    lr_scales: tuple[tuple[str, float], ...] = ()
    """Per module group (``vision``, ``projector``, ``llm``), a factor on ``lr`` for its parameters, e.g.
    ``(("vision", 0.1),)``; groups not named train at ``lr``."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"bad optimizer spec: {self}")
        if any(scale <= 0 for _, scale in self.lr_scales):
            raise ValueError(f"optimizer lr_scales must be positive: {self.lr_scales}")


@dataclass(frozen=True, kw_only=True)
class FusionSpec:
    """How a fusion stage merges its input checkpoints (SPEC.md section 3; the rule is our choice).

    ``average``: weighted parameter average, weights normalized to sum to 1; ``task_arithmetic``:
    base + sum_k w_k * (expert_k - base); ``ties``: TIES-merging of the deltas from the base.
    """

    method: str = "ties"
    """One of FUSION_METHODS."""
    weights: tuple[float, ...] = ()
    """Per expert (``average``: per model, the base first); empty means equal weights."""
    density: float = 0.5
    """TIES: fraction of each delta's entries kept (largest magnitudes)."""
    scale: float = 1.0
    """TIES: multiplier on the merged delta."""
    config_from: int = -1
    """Which input's model config (RoPE theta, ...) the merged checkpoint keeps: an index into the
    stage's ``inputs``; -1, the last one (the annealed model, whose context settings come last)."""

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise ValueError(f"fusion method {self.method!r} not in {FUSION_METHODS}")
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"fusion density must be in (0, 1], got {self.density}")


@dataclass(frozen=True, kw_only=True)
class RLSpec:
    """GSPO settings (SPEC.md section 4)."""

    group_size: int = 8
    """Rollouts G per prompt."""
    num_minibatches: int = 4
    """Each rollout batch is split into this many mini-batches (one update each)."""
    clip_low: float = 3e-4
    """Sequence ratio clipped below at 1 - clip_low."""
    clip_high: float = 4e-4
    """Sequence ratio clipped above at 1 + clip_high."""
    max_new_tokens: int = 1024
    """Rollout length cap."""
    temperature: float = 1.0
    """Sampling temperature of rollouts."""
    max_hint_level: int = NUM_HINT_LEVELS
    """Progressive hints L1..L5 for prompts whose whole group is wrong (0 disables)."""
    num_iterations: int = 1
    """General-RL rounds, with rejection sampling between them."""
    reward_weights: tuple[tuple[str, float], ...] = (("rule", 1.0),)
    """Reward sources and their weights: rule, judge, reward_model."""


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """One training stage; the runner's whole input besides data and the previous checkpoint."""

    name: str
    """Stage id, used in paths, lineage and the Prefect UI (``stage1``, ``sft``, ...)."""
    phase: str
    """``pretrain`` or ``posttrain``."""
    objective: str
    """One of OBJECTIVES."""
    trainable: tuple[str, ...]
    """Module groups updated; the rest are frozen (and must stay bit-identical)."""
    seq_len: int
    """Packed sequence length (context)."""
    data_mix: str
    """Name of the data mix in ``data_specs.mixes`` the stage's shards realize."""
    inputs: tuple[str, ...] = ()
    """Stages whose checkpoints this one starts from (fusion merges several)."""
    rope_theta: float | None = None
    """LLM RoPE base to set before training; None keeps the previous stage's."""
    num_steps: int = 100
    """Training steps: one optimizer update each (GSPO: one per mini-batch); the rate schedule spans them."""
    micro_batch_size: int = 1
    """Packed sequences per rank per forward."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage (1, 2 or 3)."""
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    """Optimizer and schedule."""
    rl: RLSpec | None = None
    """GSPO settings for ``gspo`` stages."""
    fusion: FusionSpec | None = None
    """Merge settings for ``fusion`` stages: ``inputs[0]`` is the base, the rest are merged onto it."""
    reward_model: str | None = None
    """Stage whose checkpoint scores this stage's rollouts (the ``reward_model`` reward), or None."""
    data_from: str | None = None
    """Stage whose finished model generates this stage's data, for a ``data_mix`` the post-training chain
    makes (``data_specs.mixes.GENERATED``: LongCoT samples, preference and reward pairs, RL prompts; a
    preset requires it there). That stage's own mix is what the cold-start set mixes in and what a stage
    whose generated mix came out empty trains on instead. None: a curated mix."""
    checkpoint_every: int = 50
    """Steps between resumable DeepSpeed checkpoints (with the loader state)."""
    parallelism_at_scale: str = "DP + ZeRO-2"
    """The layout the report uses at full scale (documentation; the runner uses ZeRO data parallel)."""

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"stage {self.name}: phase {self.phase!r} not in {PHASES}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"stage {self.name}: objective {self.objective!r} not in {OBJECTIVES}")
        bad = set(self.trainable) - set(MODULE_GROUPS)
        if bad:
            raise ValueError(f"stage {self.name}: unknown module groups {sorted(bad)}")
        if self.objective != "fusion" and not self.trainable:
            raise ValueError(f"stage {self.name}: a training stage needs at least one trainable group")
        if self.zero_stage not in (1, 2, 3):
            raise ValueError(f"stage {self.name}: zero_stage must be 1, 2 or 3")
        if (self.objective in RL_OBJECTIVES) != (self.rl is not None):
            raise ValueError(f"stage {self.name}: rl settings go with the {'/'.join(RL_OBJECTIVES)} objectives only")
        if (self.objective == "fusion") != (self.fusion is not None):
            raise ValueError(f"stage {self.name}: fusion settings go with the fusion objective only")
        if self.fusion is not None and len(self.inputs) < 2:
            raise ValueError(f"stage {self.name}: fusion needs a base and at least one more input")
        if self.fusion is not None and not -len(self.inputs) <= self.fusion.config_from < len(self.inputs):
            raise ValueError(f"stage {self.name}: fusion.config_from {self.fusion.config_from} is not an input")
        if self.data_from is not None and self.data_mix not in GENERATED:
            raise ValueError(
                f"stage {self.name}: data_from names the model that generates a mix of {GENERATED}; "
                f"{self.data_mix!r} is curated"
            )
        if self.reward_model is not None and self.rl is None:
            raise ValueError(f"stage {self.name}: a reward_model stage goes with rl settings")
        if min(self.seq_len, self.num_steps, self.micro_batch_size, self.grad_accum_steps) < 1:
            raise ValueError(f"stage {self.name}: sizes and counts must be positive")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StageSpec:
        data = json.loads(text)
        optimizer = data["optimizer"]
        data["optimizer"] = OptimizerSpec(
            **{
                **optimizer,
                "betas": tuple(optimizer["betas"]),
                "lr_scales": tuple(map(tuple, optimizer.get("lr_scales", ()))),
            }
        )
        if data.get("rl"):
            data["rl"] = RLSpec(**{**data["rl"], "reward_weights": tuple(map(tuple, data["rl"]["reward_weights"]))})
        if data.get("fusion"):
            data["fusion"] = FusionSpec(**{**data["fusion"], "weights": tuple(data["fusion"]["weights"])})
        for key in ("trainable", "inputs"):
            data[key] = tuple(data[key])
        return cls(**data)


ALL = MODULE_GROUPS

#: The vision pre-training stage's name (``from_scratch``).
VISION_PRETRAIN = "vision_pretrain"


def vision_pretrain_stage() -> StageSpec:
    """Vision pre-training, for a model whose ViT starts from random weights (the report's starts from
    SigLIP-so400m, already pre-trained): images against their captions (``siglip`` objective) on the
    ``image_captions`` mix. The ViT learns what the words name before any stage asks the LLM to use it;
    trained through the LLM's loss alone, a random ViT never learned shapes (docs/design.md). The LLM
    group trains so that its input embeddings (the caption side) move too; nothing else of it is used."""
    return StageSpec(
        name=VISION_PRETRAIN,
        phase="pretrain",
        objective="siglip",
        trainable=ALL,
        seq_len=8192,
        data_mix="image_captions",
        num_steps=2000,
        micro_batch_size=256,
        optimizer=OptimizerSpec(lr=1e-3, warmup_steps=100),
    )


def from_scratch(stages: tuple[StageSpec, ...]) -> tuple[StageSpec, ...]:
    """``stages`` led by vision pre-training, their first stage starting from its checkpoint."""
    first, *rest = stages
    if first.inputs:
        raise ValueError(f"stage {first.name} already starts from {list(first.inputs)}")
    return (vision_pretrain_stage(), dataclasses.replace(first, inputs=(VISION_PRETRAIN,)), *rest)


def keye_8b_stages() -> tuple[StageSpec, ...]:
    """The report's order and settings; learning rates and step counts are our choices."""
    opt = OptimizerSpec
    return (
        StageSpec(
            name="stage1",
            phase="pretrain",
            objective="lm",
            trainable=("projector",),
            seq_len=8192,
            data_mix="image_text",
            rope_theta=1_000_000.0,
            num_steps=4000,
            micro_batch_size=1,
            grad_accum_steps=8,
            optimizer=opt(lr=1e-3, warmup_steps=200),
        ),
        StageSpec(
            name="stage2",
            phase="pretrain",
            objective="lm",
            trainable=ALL,
            seq_len=8192,
            data_mix="multitask",
            inputs=("stage1",),
            num_steps=20000,
            grad_accum_steps=8,
            optimizer=opt(lr=2e-5, warmup_steps=500),
        ),
        StageSpec(
            name="stage3",
            phase="pretrain",
            objective="lm",
            trainable=ALL,
            seq_len=131_072,
            data_mix="annealing",
            inputs=("stage2",),
            rope_theta=8_000_000.0,
            num_steps=5000,
            zero_stage=1,
            grad_accum_steps=8,
            optimizer=opt(lr=1e-5, warmup_steps=100),
            parallelism_at_scale="ZeRO-1 + context parallel + pipeline parallel",
        ),
        # A model trained from stage 2 on another data mix, merged with stage 3 in stage 4.
        StageSpec(
            name="expert",
            phase="pretrain",
            objective="lm",
            trainable=ALL,
            seq_len=8192,
            data_mix="vision_expert",
            inputs=("stage2",),
            num_steps=5000,
            grad_accum_steps=8,
            optimizer=opt(lr=1e-5, warmup_steps=100),
        ),
        # Fusion: inputs[0] is the base the deltas are taken from, the rest are merged onto it.
        StageSpec(
            name="stage4",
            phase="pretrain",
            objective="fusion",
            trainable=(),
            seq_len=131_072,
            data_mix="annealing",
            inputs=("stage2", "stage3", "expert"),
            num_steps=1,
            fusion=FusionSpec(method="ties", config_from=1),
            parallelism_at_scale="none (CPU merge)",
        ),
        StageSpec(
            name="sft",
            phase="posttrain",
            objective="lm",
            trainable=ALL,
            seq_len=32_768,
            data_mix="sft",
            inputs=("stage4",),
            num_steps=10000,
            grad_accum_steps=8,
            optimizer=opt(lr=1e-5, warmup_steps=200),
        ),
        StageSpec(
            name="mpo",
            phase="posttrain",
            objective="mpo",
            trainable=("projector", "llm"),
            seq_len=8192,
            data_mix="preference",
            data_from="sft",
            inputs=("sft",),
            num_steps=2000,
            grad_accum_steps=8,
            optimizer=opt(lr=5e-7, warmup_steps=50),
        ),
        # Keye-Reward's SFT: MPO's pairs and answer pairs from the curated records (``reward_pairs``), each
        # pair judged in both orders and both modes.
        StageSpec(
            name="reward",
            phase="posttrain",
            objective="reward",
            trainable=("projector", "llm"),
            seq_len=8192,
            data_mix="reward_pairs",
            data_from="sft",
            inputs=("mpo",),
            num_steps=2000,
            grad_accum_steps=8,
            optimizer=opt(lr=2e-6, warmup_steps=50),
        ),
        # Keye-Reward after its SFT: RL on judging prompts from the same pairs, rewarded for a well-formed
        # verdict (think: assessment then letter; no_think: the letter alone) that names the better response.
        # No hints: a judging prompt has none; ``reward_weights`` is unused (the objective brings its reward).
        StageSpec(
            name="reward_rl",
            phase="posttrain",
            objective="reward_gspo",
            trainable=("projector", "llm"),
            seq_len=8192,
            data_mix="reward_pairs",
            data_from="sft",
            inputs=("reward",),
            num_steps=200,
            optimizer=opt(lr=1e-6, min_lr_ratio=1.0),
            rl=RLSpec(max_new_tokens=512, max_hint_level=0),
        ),
        # The annealing pass, last: the pairs again plus pairs whose better answer is the shorter one
        # (``tasks.preference.length_bias_pairs``), at a low learning rate, against a bias toward length.
        StageSpec(
            name="reward_anneal",
            phase="posttrain",
            objective="reward",
            trainable=("projector", "llm"),
            seq_len=8192,
            data_mix="reward_anneal",
            data_from="sft",
            inputs=("reward_rl",),
            num_steps=200,
            grad_accum_steps=8,
            optimizer=opt(lr=5e-7, warmup_steps=10),
        ),
        StageSpec(
            name="coldstart",
            phase="posttrain",
            objective="weighted_lm",
            trainable=ALL,
            seq_len=32_768,
            data_mix="longcot",
            data_from="sft",
            inputs=("mpo",),
            num_steps=3000,
            grad_accum_steps=8,
            optimizer=opt(lr=5e-6, warmup_steps=100),
        ),
        StageSpec(
            name="gspo",
            phase="posttrain",
            objective="gspo",
            trainable=("projector", "llm"),
            seq_len=16_384,
            data_mix="rl_prompts",
            data_from="sft",
            inputs=("coldstart",),
            num_steps=500,
            zero_stage=3,
            optimizer=opt(lr=1e-6, min_lr_ratio=1.0),
            rl=RLSpec(num_iterations=2),
        ),
        StageSpec(
            name="alignment",
            phase="posttrain",
            objective="gspo",
            trainable=("projector", "llm"),
            seq_len=16_384,
            data_mix="alignment_rl",
            inputs=("gspo",),
            num_steps=300,
            zero_stage=3,
            optimizer=opt(lr=5e-7, min_lr_ratio=1.0),
            rl=RLSpec(reward_weights=(("rule", 0.5), ("judge", 0.25), ("reward_model", 0.25)), max_hint_level=0),
            reward_model="reward_anneal",
        ),
    )
