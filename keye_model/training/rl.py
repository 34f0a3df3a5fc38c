"""GSPO general and alignment RL (SPEC.md section 4): rollouts, progressive hints, updates, iteration.

One step: for each prompt sample a group of G responses from the current policy (pi_old), score them,
and if none is correct retry with hints L1..L5 appended after the query, low to high, keeping the first
level whose group holds a correct rollout (``progressive_hint_rollout``). Then ``gspo_update``: group
advantages, the rollout batch cut into ``num_minibatches`` mini-batches, one optimizer step each on the
GSPO loss (keye_model.losses), whose ratio is one length-normalized ratio per response.

Between RL rounds (``RLSpec.num_iterations``): ``rejection_sample`` lets the RL model rewrite cold-start
answers a preference judge likes better, and ``pass_rate_filter`` keeps the prompts the retrained model
solves sometimes but not always.

Token layout of a rollout row: ``prompt (P) + response (T)``; the response is what ``generate`` added,
cut after its first stop token (``<|im_end|>`` / ``<|endoftext|>``), or all T tokens when it hit
``max_new_tokens``. The logits at position P - 1 + t predict response token t. Worked example: prompt
[a b c], response [x y <|im_end|> pad]: mask [1 1 1 0], log p(x) from logits[2], log p(y) from logits[3].
Rows of different lengths are right padded with attention 0 on padding and position ids counted over
real tokens only (cumsum(mask) - 1), which is also right for left padding.

Log-probs are of the sampling distribution: log_softmax(logits / temperature), no top-k / top-p, so the
ratio compares exactly the policy that sampled. Dropout should be 0 (ratios are 1 before an update).

Legend: G rollouts of one group, N rows of a mini-batch, P prompt tokens, T response tokens, L length.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from data_specs.stages import NUM_HINT_LEVELS, RLSpec
from keye_model.chat import NO_THINK_SUFFIX, THINK_SUFFIX, stop_token_ids
from keye_model.losses import GSPOClip, group_advantages, gspo_loss
from keye_model.processor import KeyeProcessor
from keye_model.rewards import Constraint, Reward, RewardSample

log = logging.getLogger(__name__)

#: Text put between the query and the hint.
HINT_PREFIX = "\n\nHint: "

RewardFn = Callable[[RewardSample], Reward]


@dataclass(frozen=True, kw_only=True)
class RLPrompt:
    """One RL prompt: the conversation up to the assistant turn, plus what scoring and hints need."""

    id: str
    """Stable prompt id (logs, hint-level records, errors)."""
    conversation: list[dict[str, Any]]
    """Messages ending with the user turn to answer (processor format; images and videos allowed)."""
    reference: str | None = None
    """Reference answer, or None (alignment prompts scored by constraints, judge or reward model)."""
    hints: tuple[str, ...] = ()
    """Hints for levels L1, L2, ... (at most 5), each appended after the query on a retry."""
    constraints: tuple[Constraint, ...] = ()
    """Hard instruction constraints the answer must meet."""
    thinking: bool | None = None
    """Think mode for the format check; None: from the query's /no_think (False) or /think (True) suffix."""

    def __post_init__(self) -> None:
        if len(self.hints) > NUM_HINT_LEVELS:
            raise ValueError(f"prompt {self.id}: {len(self.hints)} hints, at most {NUM_HINT_LEVELS} (L1..L5)")
        if not self.conversation or self.conversation[-1].get("role") != "user":
            raise ValueError(f"prompt {self.id}: the conversation must end with a user message")

    @property
    def query(self) -> str:
        return text_of(self.conversation[-1]["content"])

    @property
    def think_mode(self) -> bool | None:
        if self.thinking is not None:
            return self.thinking
        query = self.query.strip()
        return False if query.endswith(NO_THINK_SUFFIX) else True if query.endswith(THINK_SUFFIX) else None


@dataclass(kw_only=True)
class RolloutGroup:
    """G sampled responses to one prompt and the old policy's log-probs of their tokens."""

    prompt_id: str
    """Which prompt."""
    hint_level: int
    """Hint level of the prompt the responses answer (0: no hint)."""
    prompt_ids: torch.Tensor
    """(P,) long: the prompt as fed to the policy (template and hint included)."""
    pixel_values: torch.Tensor
    """(patches, 588) of the prompt's images and frames (empty for text prompts)."""
    grid_hw: torch.Tensor
    """(images + frames, 2) grids of those patches."""
    response_ids: torch.Tensor
    """(G, T) long: generated tokens, pad after the first stop token."""
    response_mask: torch.Tensor
    """(G, T) bool: real response tokens, the stop token included."""
    old_logp: torch.Tensor
    """(G, T) float: log pi_old of each response token at the sampling temperature, 0 where masked."""
    texts: tuple[str, ...]
    """Decoded responses (think block kept)."""
    rewards: torch.Tensor | None = None
    """(G,) total rewards, once scored."""
    correct: tuple[bool, ...] = ()
    """Per rollout: reward at or above the correctness threshold, once scored."""
    solved: bool = True
    """False when no hint level produced a correct rollout (the group then has no learning signal)."""

    @property
    def size(self) -> int:
        return self.response_ids.shape[0]


@dataclass(frozen=True, kw_only=True)
class GSPOMetrics:
    """What one ``gspo_update`` did."""

    mean_reward: float
    """Mean total reward over all rollouts."""
    loss: float
    """Mean of the mini-batch losses."""
    ratio_mean: float
    """Mean sequence ratio s_i over all rollouts (1 on the first mini-batch)."""
    clipped_fraction: float
    """Fraction of rollouts whose ratio was outside [1 - clip_low, 1 + clip_high]."""
    hint_levels: dict[str, int]
    """Groups per hint level used ("L0" no hint .. "L5") and "unsolved" (no level helped)."""
    num_rollouts: int
    """Rollouts in the batch."""
    minibatch_losses: tuple[float, ...]
    """Loss of each mini-batch, in order."""
    minibatch_ratios: tuple[tuple[float, ...], ...]
    """The ratios s_i of each mini-batch's rollouts (one per rollout)."""


# ---------------------------------------------------------------- prompts and sampling


def text_of(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part.get("type") == "text")


def _append_before_suffix(text: str, hint: str) -> str:
    """Hint after the query but before a trailing /think or /no_think, which must stay last."""
    stripped = text.rstrip()
    for suffix in (NO_THINK_SUFFIX, THINK_SUFFIX):
        if stripped.endswith(suffix):
            head = stripped[: -len(suffix)].rstrip()
            return f"{head}{HINT_PREFIX}{hint} {suffix}"
    return f"{stripped}{HINT_PREFIX}{hint}"


def with_hint(prompt: RLPrompt, level: int) -> list[dict[str, Any]]:
    """The prompt's conversation with hint ``level`` (1-based) appended to the last user message.

    Example: "What is x? /no_think" + L2 "try cases" -> "What is x?\\n\\nHint: try cases /no_think".
    Level 0 returns the conversation unchanged.
    """
    if level == 0:
        return prompt.conversation
    if not 1 <= level <= len(prompt.hints):
        raise ValueError(f"prompt {prompt.id}: hint level {level} requested, it has {len(prompt.hints)} hints")
    *history, last = prompt.conversation
    hint = prompt.hints[level - 1]
    content = last["content"]
    if isinstance(content, str):
        new_content: Any = _append_before_suffix(content, hint)
    else:
        texts = [i for i, part in enumerate(content) if part.get("type") == "text"]
        new_content = list(content)
        if texts:
            i = texts[-1]
            new_content[i] = {**content[i], "text": _append_before_suffix(content[i]["text"], hint)}
        else:
            new_content.append({"type": "text", "text": HINT_PREFIX.lstrip() + hint})
    return [*history, {**last, "content": new_content}]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _stop_mask(response_GT: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """(G, T) bool: tokens up to and including the first stop token; all when none stops."""
    is_stop = torch.isin(response_GT, torch.tensor(stop_token_ids(tokenizer), device=response_GT.device))
    stops_before = torch.cumsum(is_stop.long(), dim=1) - is_stop.long()
    return stops_before == 0


def sample_responses(
    model: torch.nn.Module,
    processor: KeyeProcessor,
    conversation: list[dict[str, Any]],
    *,
    num: int,
    spec: RLSpec,
    seed: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """``num`` sampled responses to one conversation: (prompt batch of 1, response ids (G, T), mask (G, T))."""
    if spec.temperature <= 0:
        raise ValueError(f"RL sampling needs temperature > 0, got {spec.temperature}")
    prompt = {k: v.to(_device(model)) for k, v in processor.build_prompt(conversation).items()}
    rows = {
        "input_ids": prompt["input_ids"].expand(num, -1),
        "attention_mask": prompt["attention_mask"].expand(num, -1),
        "pixel_values": prompt["pixel_values"].repeat(num, 1),
        "grid_hw": prompt["grid_hw"].repeat(num, 1),
    }
    response = _sample_rows(model, processor, rows, spec, seed)[:, prompt["input_ids"].shape[1] :]
    return prompt, response, _stop_mask(response, processor.tokenizer)


def _sample_rows(
    model: torch.nn.Module, processor: KeyeProcessor, rows: dict[str, torch.Tensor], spec: RLSpec, seed: int
) -> torch.Tensor:
    """One seeded ``generate`` call sampling a continuation of every row of a prompt batch (ids, prompt
    included), at ``spec.temperature`` with no top-k / top-p cut."""
    device, tokenizer = _device(model), processor.tokenizer
    media = rows["grid_hw"].shape[0] > 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return model.generate(
            rows["input_ids"],
            rows["attention_mask"],
            rows["pixel_values"] if media else None,
            rows["grid_hw"] if media else None,
            do_sample=True,
            temperature=spec.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=spec.max_new_tokens,
            eos_token_id=stop_token_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
        )


#: Conversations ``sample_texts`` samples in one ``generate`` call (x ``num`` rows each).
SAMPLE_BATCH = 16


@torch.no_grad()
def sample_texts(
    model: torch.nn.Module,
    processor: KeyeProcessor,
    conversations: Sequence[list[dict[str, Any]]],
    *,
    num: int,
    spec: RLSpec,
    seed: int,
) -> list[tuple[str, list[str]]]:
    """``num`` sampled responses to each conversation, ``SAMPLE_BATCH`` conversations per ``generate`` call
    (``KeyeProcessor.build_prompts``: left-padded rows): per conversation, (its prompt text, its decoded
    responses, think tags kept). For readers of the text (the pass-rate filter, rejection sampling);
    GSPO's rollouts keep the ids (``sample_responses``). Call k is seeded with ``seed + k``."""
    if spec.temperature <= 0:
        raise ValueError(f"RL sampling needs temperature > 0, got {spec.temperature}")
    out: list[tuple[str, list[str]]] = []
    for k, start in enumerate(range(0, len(conversations), SAMPLE_BATCH)):
        chunk = conversations[start : start + SAMPLE_BATCH]
        batch = {key: v.to(_device(model)) for key, v in processor.build_prompts(chunk, repeat=num).items()}
        ids = _sample_rows(model, processor, batch, spec, seed + k)
        width = batch["input_ids"].shape[1]
        for i in range(len(chunk)):
            first = i * num
            prompt_text = processor.decode(batch["input_ids"][first][batch["attention_mask"][first].bool()])
            responses = [processor.decode_response(ids[row, width:]) for row in range(first, first + num)]
            out.append((prompt_text, responses))
    return out


def response_logprobs(
    model: torch.nn.Module, rows: Sequence[tuple[RolloutGroup, int]], temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the responses of ``rows`` ((group, index) pairs) under ``model``.

    ``model`` may be the DeepSpeed engine (its forward). Returns (logp (N, T), mask (N, T)) with T the
    longest response among the rows' groups, logp 0 where masked. Gradients flow when enabled.
    """
    device = _device(model)
    num_t = max(group.response_ids.shape[1] for group, _ in rows)
    counts = [int(group.response_mask[i].sum()) for group, i in rows]  # the mask is a prefix of each row
    seqs = [torch.cat([g.prompt_ids, g.response_ids[i, :c]]) for (g, i), c in zip(rows, counts)]
    length = max(len(seq) for seq in seqs)
    filler = int(rows[0][0].prompt_ids[0])  # <|im_start|>, never a media placeholder; padding is masked
    input_ids = torch.full((len(rows), length), filler, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    targets = torch.zeros((len(rows), num_t), dtype=torch.long)
    mask = torch.zeros((len(rows), num_t), dtype=torch.bool)
    for n, ((group, i), seq, count) in enumerate(zip(rows, seqs, counts)):
        input_ids[n, : len(seq)], attention[n, : len(seq)] = seq, 1
        targets[n, :count], mask[n, :count] = group.response_ids[i, :count], True
    position_ids = (attention.cumsum(-1) - 1).clamp_min(0)
    pixel_values = torch.cat([group.pixel_values for group, _ in rows])
    grid_hw = torch.cat([group.grid_hw for group, _ in rows])
    media = grid_hw.shape[0] > 0
    logits = model(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        pixel_values=pixel_values.to(device) if media else None,
        grid_hw=grid_hw.to(device) if media else None,
        position_ids=position_ids.to(device),
    ).logits
    # logits[n, P_n - 1 + t] predicts response token t of row n (module docstring).
    prompt_lens = torch.tensor([group.prompt_ids.shape[0] for group, _ in rows])
    offsets = (prompt_lens[:, None] - 1 + torch.arange(num_t)[None, :]).clamp_max(length - 1).to(device)
    picked = logits[torch.arange(len(rows), device=device)[:, None], offsets].float()  # (N, T, V)
    mask = mask.to(device)
    logp = (picked / temperature).log_softmax(-1).gather(-1, targets.to(device)[..., None]).squeeze(-1)
    return logp * mask, mask


def rollout_group(
    model: torch.nn.Module,
    processor: KeyeProcessor,
    prompt: RLPrompt,
    spec: RLSpec,
    hint_level: int,
    generator_seed: int,
    *,
    reward_fn: RewardFn | None = None,
    correct_threshold: float = 1.0,
) -> RolloutGroup:
    """G = spec.group_size sampled responses at ``hint_level`` with pi_old log-probs (no grad).

    With ``reward_fn`` the group comes back scored (``score_group``).
    """
    conversation = with_hint(prompt, hint_level)
    batch, response, mask = sample_responses(
        model, processor, conversation, num=spec.group_size, spec=spec, seed=generator_seed
    )
    group = RolloutGroup(
        prompt_id=prompt.id,
        hint_level=hint_level,
        prompt_ids=batch["input_ids"][0].cpu(),
        pixel_values=batch["pixel_values"].cpu(),
        grid_hw=batch["grid_hw"].cpu(),
        response_ids=response.cpu(),
        response_mask=mask.cpu(),
        old_logp=torch.zeros(response.shape),
        texts=tuple(processor.decode_response(r) for r in response),
    )
    with torch.no_grad():
        old_logp, _ = response_logprobs(model, [(group, i) for i in range(group.size)], spec.temperature)
    group.old_logp = old_logp.cpu()
    if reward_fn is not None:
        score_group(group, prompt, processor, reward_fn, correct_threshold=correct_threshold)
    return group


def reward_sample(prompt: RLPrompt, text: str, prompt_text: str, hint_level: int) -> RewardSample:
    return RewardSample(
        id=prompt.id,
        query=prompt.query,
        response=text,
        reference=prompt.reference,
        thinking=prompt.think_mode,
        constraints=prompt.constraints,
        prompt_text=prompt_text,
        hint_level=hint_level,
    )


def score_group(
    group: RolloutGroup,
    prompt: RLPrompt,
    processor: KeyeProcessor,
    reward_fn: RewardFn,
    *,
    correct_threshold: float = 1.0,
) -> RolloutGroup:
    """Fill ``rewards`` and ``correct`` (total >= correct_threshold) of a group in place; returns it."""
    prompt_text = processor.decode(group.prompt_ids)
    totals = [reward_fn(reward_sample(prompt, text, prompt_text, group.hint_level)).total for text in group.texts]
    group.rewards = torch.tensor(totals, dtype=torch.float32)
    group.correct = tuple(t >= correct_threshold for t in totals)
    return group


def progressive_hint_rollout(
    model: torch.nn.Module,
    processor: KeyeProcessor,
    prompt: RLPrompt,
    spec: RLSpec,
    reward_fn: RewardFn,
    *,
    generator_seed: int,
    correct_threshold: float = 1.0,
) -> RolloutGroup:
    """A scored group; if no rollout is correct, retry at hint levels 1..max_hint_level, low to high.

    The first level with a correct rollout is the group used for the update (``hint_level`` records it).
    If no level helps, the hint-free group comes back with ``solved=False`` (all-wrong: zero advantages).
    Level k samples with seed ``generator_seed + k``.
    """
    first = rollout_group(
        model, processor, prompt, spec, 0, generator_seed, reward_fn=reward_fn, correct_threshold=correct_threshold
    )
    if any(first.correct):
        return first
    for level in range(1, min(spec.max_hint_level, len(prompt.hints)) + 1):
        group = rollout_group(
            model,
            processor,
            prompt,
            spec,
            level,
            generator_seed + level,
            reward_fn=reward_fn,
            correct_threshold=correct_threshold,
        )
        if any(group.correct):
            log.info("prompt %s: solved with hint level %d", prompt.id, level)
            return group
    first.solved = False
    return first


# ---------------------------------------------------------------- update


def hint_histogram(groups: Sequence[RolloutGroup]) -> dict[str, int]:
    """Groups per hint level used: {"L0": .., ..., "L5": .., "unsolved": ..}."""
    counts = Counter("unsolved" if not g.solved else f"L{g.hint_level}" for g in groups)
    return {key: counts.get(key, 0) for key in [f"L{k}" for k in range(NUM_HINT_LEVELS + 1)] + ["unsolved"]}


#: Names of the hint table's rows: all-wrong with no hint, then after hints up to L1 .. L5.
ALL_WRONG_KEYS = ("all_wrong_no_hint", *(f"all_wrong_L{k}" for k in range(1, NUM_HINT_LEVELS + 1)))


def all_wrong_table(hint_levels: Mapping[str, int]) -> dict[str, float]:
    """The report's hint table from ``hint_histogram`` counts: the fraction of groups with no correct
    rollout without a hint, and still none after trying hints up to L1, L2, ... L5 (cumulative).

    Example: 10 groups, {"L0": 6, "L1": 2, "L5": 1, "unsolved": 1} -> no hint 0.4, L1..L4 0.2, L5 0.1
    (a group solved first at level k counts as all-wrong at every level below k).
    """
    total = sum(hint_levels.values())
    if total == 0:
        raise ValueError("all_wrong_table: no groups counted")
    solved, table = 0, {}
    for level, key in enumerate(ALL_WRONG_KEYS):
        solved += hint_levels.get(f"L{level}", 0)
        table[key] = (total - solved) / total
    return table


def gspo_update(
    engine: Any, model: torch.nn.Module, processor: KeyeProcessor, groups: Sequence[RolloutGroup], spec: RLSpec
) -> GSPOMetrics:
    """One GSPO update on scored groups: spec.num_minibatches optimizer steps through ``engine``.

    Advantages are normalized within each group; the rollouts, in group order, are cut into contiguous
    mini-batches (``torch.tensor_split``); each gets new log-probs with grad through the engine, the GSPO
    loss, ``engine.backward`` and ``engine.step``. ``processor`` is unused today (kept for a signature
    shared with the rollout functions). ``engine`` must wrap ``model`` and step on every call
    (gradient_accumulation_steps 1).
    """
    del processor
    if getattr(engine, "module", None) is not model:
        raise ValueError("gspo_update: engine.module is not the given model")
    if engine.gradient_accumulation_steps() != 1:
        raise ValueError(
            f"gspo_update needs gradient_accumulation_steps 1 (one optimizer step per mini-batch), "
            f"the engine has {engine.gradient_accumulation_steps()}"
        )
    unscored = [g.prompt_id for g in groups if g.rewards is None]
    if unscored:
        raise ValueError(f"gspo_update: groups of prompts {unscored} have no rewards (score_group first)")
    rows = [(g, i) for g in groups for i in range(g.size)]
    if len(rows) < spec.num_minibatches:
        raise ValueError(f"gspo_update: {len(rows)} rollouts cannot fill {spec.num_minibatches} mini-batches")
    advantages = torch.cat([group_advantages(g.rewards) for g in groups])
    clip = GSPOClip(low=spec.clip_low, high=spec.clip_high)
    losses, ratios, clipped = [], [], 0
    for chunk in torch.tensor_split(torch.arange(len(rows)), spec.num_minibatches):
        batch_rows = [rows[k] for k in chunk.tolist()]
        new_logp, mask = response_logprobs(engine, batch_rows, spec.temperature)
        num_t = new_logp.shape[1]
        old_logp = torch.stack(
            [torch.nn.functional.pad(g.old_logp[i], (0, num_t - g.old_logp.shape[1])) for g, i in batch_rows]
        ).to(new_logp.device)
        out = gspo_loss(new_logp, old_logp, mask, advantages[chunk].to(new_logp.device), clip)
        engine.backward(out.loss)
        engine.step()
        losses.append(out.loss.item())
        ratios.append(tuple(out.ratio_G.tolist()))
        clipped += round(out.clipped_fraction * len(batch_rows))
    all_ratios = [r for batch in ratios for r in batch]
    rewards = torch.cat([g.rewards for g in groups])
    return GSPOMetrics(
        mean_reward=rewards.mean().item(),
        loss=sum(losses) / len(losses),
        ratio_mean=sum(all_ratios) / len(all_ratios),
        clipped_fraction=clipped / len(rows),
        hint_levels=hint_histogram(groups),
        num_rollouts=len(rows),
        minibatch_losses=tuple(losses),
        minibatch_ratios=tuple(ratios),
    )


def run_gspo(
    engine: Any,
    model: torch.nn.Module,
    processor: KeyeProcessor,
    prompts: Sequence[RLPrompt],
    spec: RLSpec,
    reward_fn: RewardFn,
    num_steps: int,
    *,
    prompts_per_step: int = 1,
    seed: int = 0,
    correct_threshold: float = 1.0,
) -> list[GSPOMetrics]:
    """``num_steps`` GSPO steps over ``prompts`` taken in order, cycling; per-step metrics.

    Step s rolls out prompts [s*k, (s+1)*k) mod len(prompts) (k = prompts_per_step) with progressive hints,
    seeds ``seed + 1000 * (s * k + j)``, then runs ``gspo_update``.
    """
    if not prompts:
        raise ValueError("run_gspo: no prompts")
    history = []
    for step in range(num_steps):
        groups = []
        for j in range(prompts_per_step):
            index = step * prompts_per_step + j
            prompt = prompts[index % len(prompts)]
            groups.append(
                progressive_hint_rollout(
                    model,
                    processor,
                    prompt,
                    spec,
                    reward_fn,
                    generator_seed=seed + 1000 * index,
                    correct_threshold=correct_threshold,
                )
            )
        metrics = gspo_update(engine, model, processor, groups, spec)
        log.info(
            "gspo step %d: reward %.3f loss %.4g ratio %.4f clipped %.2f hints %s",
            step,
            metrics.mean_reward,
            metrics.loss,
            metrics.ratio_mean,
            metrics.clipped_fraction,
            metrics.hint_levels,
        )
        history.append(metrics)
    return history
