"""One optimizer step of each objective: lm, weighted_lm (replay weights), mpo, reward (judge data
through lm), gspo (rollouts with progressive hints, then mini-batch updates)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from keye_model import losses
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


class Objective:
    """One optimizer step of the stage's objective (backward and engine steps included)."""

    def __init__(self, config: RunConfig, engine, batches: Batches) -> None:
        self.config, self.engine, self.batches = config, engine, batches
        self.stage = config.stage
        self.reward_mean = losses.RunningRewardMean()
        self.reference: KeyeForConditionalGeneration | None = None
        self.reward_fn = None
        if self.stage.objective == "mpo":
            self.reference = copy.deepcopy(engine.module).eval().requires_grad_(False)
        if self.stage.objective == "gspo":
            if self.stage.grad_accum_steps != 1:
                raise ValueError(f"stage {self.stage.name}: GSPO steps once per mini-batch; set grad_accum_steps=1")
            self.reward_fn = build_reward_fn(config, batches.processor, engine.device)

    def state_dict(self) -> dict[str, Any]:
        return {"reward_mean": self.reward_mean.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reward_mean.load_state_dict(state["reward_mean"])

    def train_step(self, step: int) -> StepOutput:
        if self.stage.objective == "gspo":
            return self._gspo(step)
        micro = self._mpo if self.stage.objective == "mpo" else self._lm
        outs = []
        for _ in range(self.stage.grad_accum_steps):
            loss, metrics, ids, tokens = micro()
            self.engine.backward(loss)
            self.engine.step()
            outs.append((loss.item(), metrics, ids, tokens))
        merged: dict[str, float] = {}
        for _, metrics, _, _ in outs:
            merged.update(metrics)
        return StepOutput(loss=sum(o[0] for o in outs) / len(outs), metrics=merged,
                          sample_ids=[i for o in outs for i in o[2]], tokens=sum(o[3] for o in outs))

    def _lm(self) -> tuple[torch.Tensor, dict[str, float], list[str], int]:
        packed = self.batches.next_packed()
        inputs = {k: v.to(self.engine.device) for k, v in packed.model_inputs().items()}
        if self.stage.objective == "weighted_lm":
            labels = inputs.pop("labels")
            logp, _ = losses.token_logprobs(self.engine(**inputs).logits, labels)
            weights = packed.token_weights[:, 1:].to(logp.device)
            loss = -(logp * weights).sum() / weights.sum().clamp_min(1e-12)
        else:
            loss = self.engine(**inputs).loss
        return loss, {"packing_efficiency": packed.efficiency}, packed.sample_ids, packed.num_real_tokens

    def _mpo(self) -> tuple[torch.Tensor, dict[str, float], list[str], int]:
        batch, ids = self.batches.next_pairs()
        batch = {k: v.to(self.engine.device) for k, v in batch.items()}
        n = len(ids)
        labels = batch.pop("labels")
        logits = self.engine(**batch).logits
        seq_logp = losses.sequence_logprobs(logits, labels)
        with torch.no_grad():
            ref_logp = losses.sequence_logprobs(self.reference(**batch).logits, labels)
        chosen_logp, chosen_mask = losses.token_logprobs(logits[:n], labels[:n])
        generation = -chosen_logp.sum() / chosen_mask.sum().clamp_min(1)
        out = losses.mpo_loss(policy_chosen_B=seq_logp[:n], policy_rejected_B=seq_logp[n:],
                              ref_chosen_B=ref_logp[:n], ref_rejected_B=ref_logp[n:], generation=generation,
                              reward_mean=self.reward_mean)
        metrics = {"preference_loss": out.preference.item(), "quality_loss": out.quality.item(),
                   "generation_loss": out.generation.item(), "bco_delta": out.delta}
        return out.total, metrics, ids, int(batch["attention_mask"].sum())

    def _gspo(self, step: int) -> StepOutput:
        from keye_model.training.rl import gspo_update, progressive_hint_rollout

        spec = self.stage.rl
        prompts = [examples.rl_prompt(ex) for ex in self.batches.my_examples()]
        model = self.engine.module
        groups = [progressive_hint_rollout(model, self.batches.processor, prompt, spec, self.reward_fn,
                                           generator_seed=self.config.seed + 1000 * step + j)
                  for j, prompt in enumerate(prompts)]
        m = gspo_update(self.engine, model, self.batches.processor, groups, spec)
        metrics = {"mean_reward": m.mean_reward, "ratio_mean": m.ratio_mean, "clipped_fraction": m.clipped_fraction,
                   **{f"hint_level_{k}": float(v) for k, v in m.hint_levels.items()}}
        tokens = sum(int(g.response_mask.sum()) for g in groups)
        return StepOutput(loss=m.loss, metrics=metrics, sample_ids=[p.id for p in prompts], tokens=tokens)


def build_reward_fn(config: RunConfig, processor: KeyeProcessor, device: torch.device):
    """The stage's RewardFunction: rule rewards, plus judge / reward-model scores from a trained judge."""
    from keye_model.rewards import RewardFunction, versus_reference
    from keye_model.training.judge import PairwiseJudge

    weights = config.stage.rl.reward_weights
    needs_judge = any(name in ("judge", "reward_model") for name, _ in weights)
    if not needs_judge:
        return RewardFunction(weights=weights)
    if not config.reward_model_checkpoint:
        raise ValueError(f"stage {config.stage.name} weighs judge/reward-model rewards but has no "
                         "reward_model_checkpoint")
    judge_model = KeyeForConditionalGeneration.from_pretrained(config.reward_model_checkpoint).to(device)
    score = versus_reference(PairwiseJudge(judge_model, processor))
    return RewardFunction(weights=weights, judge=score, reward_model=score)
