"""The objective registry: each training objective is one class holding its batch building and its loss.

A stage names its objective (``StageSpec.objective``); the runner looks the class up once with
``get_objective`` and calls ``train_step`` per optimizer step. Adding an objective is one class here
with ``@register`` (its ``name`` also goes into ``data_specs.stages.OBJECTIVES``, which validates stage
specs without importing torch; a test checks both agree) and its test.

    lm           next-token loss on the assistant turns of curated samples
    weighted_lm  the same, each sample weighted by its replay weight (LongCoT cold-start)
    reward       the pairwise judge (Keye-Reward) trained through lm on judging conversations
    mpo          preference + quality + generation loss against a frozen reference (InternVL2.5-MPO)
    siglip       vision pre-training: images against their captions, SigLIP's sigmoid loss
    gspo         rollouts with progressive hints, then sequence-level clipped updates
    reward_gspo  the same for the pairwise judge: judging prompts from pairs, format + outcome reward
    fusion       no training: merges its input checkpoints (``trains = False``)
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from data_specs.stages import StageSpec
from keye_model import losses
from keye_model.fusion import merge
from keye_model.model import KeyeForConditionalGeneration
from keye_model.processor import KeyeProcessor
from keye_model.training import examples
from keye_model.training.batches import Batches
from keye_model.training.run_config import RunConfig


@dataclass
class StepOutput:
    loss: float
    metrics: dict[str, float]
    sample_ids: list[str]
    tokens: int


@dataclass
class MicroStep:
    """One forward of a micro batch: the loss to back-propagate and what to log about it."""

    loss: torch.Tensor
    metrics: dict[str, float]
    sample_ids: list[str]
    tokens: int


class Objective(abc.ABC):
    """One optimizer step of a stage's objective (backward and engine steps included).

    State that must survive a resume goes in ``state_dict``. Most objectives are
    ``AccumulatedObjective``s, which only say what one micro batch's loss is.
    """

    name: ClassVar[str]
    trains: ClassVar[bool] = True
    """False for objectives that make their checkpoint without an optimizer (fusion)."""

    def __init__(self, config: RunConfig, engine, batches: Batches) -> None:
        self.config, self.engine, self.batches = config, engine, batches
        self.stage = config.stage

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved: nothing, unless a subclass keeps state."""
        del state

    @abc.abstractmethod
    def train_step(self, step: int) -> StepOutput:
        """One optimizer step."""

    @classmethod
    def updates_per_step(cls, stage: StageSpec) -> int:
        """Optimizer updates one ``train_step`` makes (the learning-rate schedule counts steps, not updates)."""
        del stage
        return 1


class AccumulatedObjective(Objective):
    """``train_step`` accumulates ``grad_accum_steps`` micro batches, each given by ``micro_step``."""

    @abc.abstractmethod
    def micro_step(self) -> MicroStep:
        """One micro batch's loss and what to log about it."""

    def train_step(self, step: int) -> StepOutput:
        outs = []
        for _ in range(self.stage.grad_accum_steps):
            out = self.micro_step()
            self.engine.backward(out.loss)
            self.engine.step()
            outs.append(out)
        merged: dict[str, float] = {}
        for out in outs:
            merged.update(out.metrics)
        return StepOutput(
            loss=sum(o.loss.item() for o in outs) / len(outs),
            metrics=merged,
            sample_ids=[i for o in outs for i in o.sample_ids],
            tokens=sum(o.tokens for o in outs),
        )


REGISTRY: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    assert cls.name not in REGISTRY, f"two objectives are named {cls.name!r}"
    REGISTRY[cls.name] = cls
    return cls


def get_objective(name: str) -> type[Objective]:
    """The objective class of that name; ValueError naming the known ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name]


@register
class LM(AccumulatedObjective):
    """Next-token loss on the assistant turns of curated samples, packed."""

    name = "lm"

    def conversations(self, example: examples.Example) -> list[examples.Conversation]:
        return [examples.sft_conversation(example)]

    def loss(self, inputs: dict[str, torch.Tensor], packed) -> torch.Tensor:
        return self.engine(**inputs).loss

    def micro_step(self) -> MicroStep:
        encoded = []
        for ex in self.batches.my_examples():
            convs = self.conversations(ex)
            for i, conv in enumerate(convs):
                sample_id = ex.sample_id if len(convs) == 1 else f"{ex.sample_id}-{i}"
                encoded.append(self.batches.encode(conv, sample_id, ex.weight))
        packed = self.batches.pack(encoded)
        inputs = {k: v.to(self.engine.device) for k, v in packed.model_inputs().items()}
        return MicroStep(
            self.loss(inputs, packed),
            {"packing_efficiency": packed.efficiency},
            packed.sample_ids,
            packed.num_real_tokens,
        )


@register
class WeightedLM(LM):
    """LongCoT cold-start: each sample's token-mean loss weighted by its replay weight."""

    name = "weighted_lm"

    def loss(self, inputs: dict[str, torch.Tensor], packed) -> torch.Tensor:
        labels = inputs.pop("labels")
        logits = self.engine(**inputs).logits
        return losses.weighted_lm_loss(logits, labels, packed.token_weights.to(logits.device))


@register
class Reward(LM):
    """The pairwise judge: both orders of each preference pair, in no_think and think modes, through lm."""

    name = "reward"

    def conversations(self, example: examples.Example) -> list[examples.Conversation]:
        return examples.judge_conversations(example)


@register
class MPO(AccumulatedObjective):
    """MPO against a frozen copy of the starting policy; rows are chosen then rejected, padded."""

    name = "mpo"

    def __init__(self, config: RunConfig, engine, batches: Batches) -> None:
        super().__init__(config, engine, batches)
        self.reference = copy.deepcopy(engine.module).eval().requires_grad_(False)
        self.reward_mean = losses.RunningRewardMean()

    def state_dict(self) -> dict[str, Any]:
        return {"reward_mean": self.reward_mean.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reward_mean.load_state_dict(state["reward_mean"])

    def micro_step(self) -> MicroStep:
        exs = self.batches.my_examples()
        pairs = [examples.preference_conversations(ex) for ex in exs]
        ids = [ex.sample_id for ex in exs]
        batch = self.batches.processor(
            [c for c, _ in pairs] + [r for _, r in pairs],
            sample_ids=[f"{i}-chosen" for i in ids] + [f"{i}-rejected" for i in ids],
        )
        batch = {k: v.to(self.engine.device) for k, v in batch.items()}
        n = len(ids)
        labels = batch.pop("labels")
        logits = self.engine(**batch).logits
        seq_logp = losses.sequence_logprobs(logits, labels)
        with torch.no_grad():
            ref_logp = losses.sequence_logprobs(self.reference(**batch).logits, labels)
        chosen_logp, chosen_mask = losses.token_logprobs(logits[:n], labels[:n])
        generation = -chosen_logp.sum() / chosen_mask.sum().clamp_min(1)
        out = losses.mpo_loss(
            policy_chosen_B=seq_logp[:n],
            policy_rejected_B=seq_logp[n:],
            ref_chosen_B=ref_logp[:n],
            ref_rejected_B=ref_logp[n:],
            generation=generation,
            reward_mean=self.reward_mean,
        )
        metrics = {
            "preference_loss": out.preference.item(),
            "quality_loss": out.quality.item(),
            "generation_loss": out.generation.item(),
            "bco_delta": out.delta,
            "reward_accuracy": float((seq_logp[:n] - ref_logp[:n] > seq_logp[n:] - ref_logp[n:]).float().mean()),
        }
        return MicroStep(out.total, metrics, ids, int(batch["attention_mask"].sum()))


@register
class SigLIP(AccumulatedObjective):
    """Vision pre-training for a ViT that starts from random weights, where the report's starts from SigLIP:
    each image's projected tokens against its caption's input embeddings, SigLIP's sigmoid loss.

    An image is its projector output pooled (``losses.pooled_embedding``), a caption its tokens' input
    embeddings pooled the same way, so both live in the LLM's width and the projector learns to say what
    the caption's words say. Samples whose captions are the same text are positives of each other; the
    negatives are the rest of the rank's micro batch (no gather across ranks). A sample must be one image
    and a caption (an ``image_captions`` mix): anything else is an error naming it.
    """

    name = "siglip"

    def micro_step(self) -> MicroStep:
        exs = self.batches.my_examples()
        model, processor = self.engine.module, self.batches.processor
        patches, grids, captions = [], [], []
        for ex in exs:
            images = [part["image"] for part in ex.user_parts if part.get("type") == "image"]
            caption = " ".join(str(ex.record.get("answer") or "").lower().split())
            if len(images) != 1 or not caption:
                raise ValueError(
                    f"stage {self.stage.name}: sample {ex.sample_id} is not an image with a caption "
                    f"({len(images)} images, caption {caption!r}); {self.name} trains on image-caption pairs"
                )
            pixels, grid = processor.load_image(images[0], ex.sample_id)
            patches.append(torch.from_numpy(pixels))
            grids.append(grid)
            captions.append(caption)
        device = self.engine.device
        merge = processor.config.merge_size
        features = model.get_visual_features(torch.cat(patches).to(device), torch.tensor(grids, device=device))
        per_image = features.split([(h // merge) * (w // merge) for h, w in grids])
        image = torch.stack([losses.pooled_embedding(tokens) for tokens in per_image])
        embed = model.language_model.get_input_embeddings()
        text = torch.stack(
            [
                losses.pooled_embedding(embed(torch.tensor(processor.tokenizer(c)["input_ids"], device=device)))
                for c in captions
            ]
        )
        positive = torch.tensor([[a == b for b in captions] for a in captions], device=device)
        loss = losses.sigmoid_contrastive_loss(image, text, positive)
        with torch.no_grad():
            best = (image @ text.T).argmax(-1)
            caption_accuracy = positive[torch.arange(len(captions), device=device), best].float().mean().item()
        return MicroStep(
            loss, {"caption_accuracy": caption_accuracy}, [ex.sample_id for ex in exs], sum(len(t) for t in per_image)
        )


@register
class GSPO(Objective):
    """GSPO: a group of rollouts per prompt (progressive hints when all are wrong), then one update per
    mini-batch of the rollout batch; the optimizer steps inside ``gspo_update``.

    Besides each step's own numbers, every step logs the stage's hint table so far (``gspo/all_wrong_*``,
    over every group since the stage began, ``rl.all_wrong_table``; ``gspo/groups`` counts them): the
    last step's values are the stage's table. The counts survive a resume (``state_dict``).
    """

    name = "gspo"

    def __init__(self, config: RunConfig, engine, batches: Batches) -> None:
        super().__init__(config, engine, batches)
        if self.stage.grad_accum_steps != 1:
            raise ValueError(f"stage {self.stage.name}: GSPO steps once per mini-batch; set grad_accum_steps=1")
        self.reward_fn = self.reward_function(config, batches.processor, engine.device)
        self.hint_counts: dict[str, int] = {}

    @classmethod
    def updates_per_step(cls, stage: StageSpec) -> int:
        return stage.rl.num_minibatches

    def state_dict(self) -> dict[str, Any]:
        return {"hint_counts": dict(self.hint_counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.hint_counts = dict(state.get("hint_counts", {}))  # checkpoints from before the table: none

    def reward_function(self, config: RunConfig, processor: KeyeProcessor, device: torch.device):
        """What scores a rollout: the stage's weighted reward sources (``build_reward_fn``)."""
        return build_reward_fn(config, processor, device)

    def rl_prompts(self, example: examples.Example) -> list[examples.RLPrompt]:
        """The RL prompts a sample becomes: one, its question and reference answer."""
        return [examples.rl_prompt(example)]

    def train_step(self, step: int) -> StepOutput:
        from keye_model.training.rl import all_wrong_table, gspo_update, progressive_hint_rollout

        spec = self.stage.rl
        batch = self.batches.my_examples()
        prompts = [prompt for ex in batch for prompt in self.rl_prompts(ex)]
        model = self.engine.module
        groups = [
            progressive_hint_rollout(
                model,
                self.batches.processor,
                prompt,
                spec,
                self.reward_fn,
                generator_seed=self.config.seed + 1000 * step + j,
            )
            for j, prompt in enumerate(prompts)
        ]
        m = gspo_update(self.engine, model, self.batches.processor, groups, spec)
        for key, count in m.hint_levels.items():
            self.hint_counts[key] = self.hint_counts.get(key, 0) + count
        metrics = {
            "mean_reward": m.mean_reward,
            "ratio_mean": m.ratio_mean,
            "clipped_fraction": m.clipped_fraction,
            **{f"hint_level_{k}": float(v) for k, v in m.hint_levels.items()},
            "gspo/groups": float(sum(self.hint_counts.values())),
            **{f"gspo/{k}": v for k, v in all_wrong_table(self.hint_counts).items()},
        }
        tokens = sum(int(g.response_mask.sum()) for g in groups)
        return StepOutput(loss=m.loss, metrics=metrics, sample_ids=[ex.sample_id for ex in batch], tokens=tokens)


@register
class RewardGSPO(GSPO):
    """RL for the pairwise judge (Keye-Reward, after its SFT): GSPO on judging prompts made from preference
    pairs, rewarded for format + outcome (``keye_model.training.judge.verdict_reward``)."""

    name = "reward_gspo"

    def reward_function(self, config: RunConfig, processor: KeyeProcessor, device: torch.device):
        from keye_model.training.judge import verdict_reward

        return verdict_reward

    def rl_prompts(self, example: examples.Example) -> list[examples.RLPrompt]:
        return examples.judge_rl_prompts(example)


@register
class Fusion(Objective):
    """Stage 4: merge the input checkpoints by the stage's ``FusionSpec``; no optimizer, no data."""

    name = "fusion"
    trains = False

    @staticmethod
    def merged_model(config: RunConfig) -> KeyeForConditionalGeneration:
        """``init_checkpoint`` is the base; ``expert_checkpoints`` are merged onto it. The merged model
        keeps the config (RoPE theta, ...) of the input ``FusionSpec.config_from`` names."""
        spec = config.stage.fusion
        if not config.init_checkpoint or not config.expert_checkpoints:
            raise ValueError(
                f"fusion stage {config.stage.name} needs init_checkpoint (the base) and expert_checkpoints"
            )
        paths = [config.init_checkpoint, *config.expert_checkpoints]
        models = [KeyeForConditionalGeneration.from_pretrained(p) for p in paths]
        merged = merge(models[0].state_dict(), [m.state_dict() for m in models[1:]], spec)
        keeper = models[spec.config_from]
        keeper.load_state_dict(merged)
        return keeper


def build_reward_fn(config: RunConfig, processor: KeyeProcessor, device: torch.device):
    """The stage's RewardFunction: rule rewards; the judge reward (``reference_judge``: a configured
    OpenAI-compatible server, else the rule judge); the reward-model reward from the trained pairwise judge.
    """
    from keye_model.reference_judge import judge_from_env
    from keye_model.rewards import RewardFunction, versus_reference
    from keye_model.training.judge import PairwiseJudge

    weights = config.stage.rl.reward_weights
    names = {name for name, _ in weights}
    judge = judge_from_env() if "judge" in names else None
    reward_model = None
    if "reward_model" in names:
        if not config.reward_model_checkpoint:
            raise ValueError(
                f"stage {config.stage.name} weighs reward-model rewards but has no "
                "reward_model_checkpoint (set StageSpec.reward_model)"
            )
        judge_model = KeyeForConditionalGeneration.from_pretrained(config.reward_model_checkpoint).to(device)
        reward_model = versus_reference(PairwiseJudge(judge_model, processor))
    return RewardFunction(weights=weights, judge=judge, reward_model=reward_model)
