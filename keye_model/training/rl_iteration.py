"""Between GSPO rounds (SPEC.md section 4, iteration with rejection sampling).

(1) the cold-start model is trained by general RL; (2) ``rejection_sample``: the RL model resamples the
cold-start set, and where a preference judge prefers its answer to the reference, its answer replaces
it -- only a right answer, where the sample's problem has a checkable one (our choice: the one answer
matcher vets before the judge weighs, so a judge at chance cannot teach the model wrong answers);
(3) the cold-start model is retrained on the updated set; (4) ``pass_rate_filter`` keeps the RL prompts
whose sampling accuracy is strictly between 0 and 1 for the next round.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from data_specs.stages import RLSpec
from keye_model.answers import answers_match, join_thinking, split_thinking
from keye_model.processor import KeyeProcessor
from keye_model.training.rl import RewardFn, RLPrompt, reward_sample, sample_texts, text_of

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PassRateFilter:
    """Which prompts a model solves sometimes but not always."""

    kept: tuple[RLPrompt, ...]
    """Prompts with sampling accuracy strictly between 0 and 1, in input order."""
    accuracy: dict[str, float]
    """Sampling accuracy of every prompt, by id."""


def pass_rate_filter(
    model: torch.nn.Module,
    processor: KeyeProcessor,
    prompts: Sequence[RLPrompt],
    k: int,
    reward_fn: RewardFn,
    *,
    spec: RLSpec,
    seed: int = 0,
    correct_threshold: float = 1.0,
) -> PassRateFilter:
    """SPEC iteration step 4: k samples per prompt (no hints); keep prompts with 0 < accuracy < 1."""
    if k < 1:
        raise ValueError(f"pass_rate_filter needs k >= 1 samples per prompt, got {k}")
    accuracy: dict[str, float] = {}
    sampled = sample_texts(model, processor, [p.conversation for p in prompts], num=k, spec=spec, seed=seed)
    for prompt, (prompt_text, responses) in zip(prompts, sampled, strict=True):
        rewards = [reward_fn(reward_sample(prompt, r, prompt_text, 0)).total for r in responses]
        accuracy[prompt.id] = sum(r >= correct_threshold for r in rewards) / k
    kept = tuple(p for p in prompts if 0.0 < accuracy[p.id] < 1.0)
    return PassRateFilter(kept=kept, accuracy=accuracy)


@dataclass(frozen=True, kw_only=True)
class ColdStartSample:
    """A LongCoT cold-start sample: a conversation whose last message is the reference assistant turn."""

    id: str
    """Sample id."""
    conversation: list[dict[str, Any]]
    """Messages; the last is the assistant answer (``content``, optional ``reasoning_content``)."""
    reference: str | None = None
    """The problem's checkable answer (``answers_match``); None: the judge alone decides."""


@dataclass(frozen=True, kw_only=True)
class RejectionSampling:
    """The cold-start set after the RL model's answers replaced the ones the judge liked less."""

    samples: tuple[ColdStartSample, ...]
    """All samples in input order, replaced ones carrying the RL answer."""
    replaced: tuple[str, ...]
    """Ids of the replaced samples."""
    wrong: tuple[str, ...]
    """Ids of the samples whose RL answer the answer matcher judged wrong (never replaced, never judged)."""
    preference: dict[str, float]
    """P(RL answer better than the reference) per judged sample id, both orders averaged."""


def rejection_sample(
    model: torch.nn.Module,
    processor: KeyeProcessor,
    cold_start_samples: Sequence[ColdStartSample],
    judge: Callable[[str, str, str], float],
    *,
    spec: RLSpec,
    seed: int = 0,
) -> RejectionSampling:
    """SPEC iteration step 2: the RL model answers each cold-start prompt once; the answer replaces the
    reference where the judge prefers it: (judge(q, new, ref) + 1 - judge(q, ref, new)) / 2 > 0.5
    (both orders, so position bias cancels). A sample with a ``reference`` keeps its answer, unjudged,
    when the RL answer does not match it."""
    for sample in cold_start_samples:
        if sample.conversation[-1].get("role") != "assistant" or len(sample.conversation) < 2:
            raise ValueError(f"cold-start sample {sample.id}: the conversation must end with an assistant turn")
    contexts = [s.conversation[:-1] for s in cold_start_samples]
    sampled = sample_texts(model, processor, contexts, num=1, spec=spec, seed=seed)
    out, replaced, wrong, preference = [], [], [], {}
    for sample, context, (_, [new_text]) in zip(cold_start_samples, contexts, sampled, strict=True):
        reference = sample.conversation[-1]
        thinking, answer = split_thinking(new_text)
        ref_text = join_thinking(reference.get("reasoning_content"), text_of(reference["content"]))
        if sample.reference is not None and not answers_match(new_text, sample.reference):
            wrong.append(sample.id)
            out.append(sample)
            continue
        query = text_of(context[-1]["content"])
        p = (float(judge(query, new_text, ref_text)) + 1.0 - float(judge(query, ref_text, new_text))) / 2.0
        preference[sample.id] = p
        if p > 0.5:
            message: dict[str, Any] = {"role": "assistant", "content": answer}
            if thinking is not None:
                message["reasoning_content"] = thinking
            sample = dataclasses.replace(sample, conversation=[*context, message])
            replaced.append(sample.id)
        out.append(sample)
    return RejectionSampling(samples=tuple(out), replaced=tuple(replaced), wrong=tuple(wrong), preference=preference)
