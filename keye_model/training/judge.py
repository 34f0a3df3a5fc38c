"""The trained Keye reward model as a pairwise judge: its verdicts, their rewards, and P(A better than B).

The reward stages train the model to answer ``examples.judge_prompt`` with the letter of the better
response: ``no_think`` with the letter alone, ``think`` with an assessment in the think block, then the
letter. Three readers of a judgment live here, so they cannot disagree:

- ``parse_verdict``: THE rule that turns a judge's response into a verdict. The verdict is the text after
  the think block (all of it in ``no_think``), stripped of surrounding white space and of one trailing
  period: it must then be exactly ``A`` or ``B``; anything else (``"Response A"``, ``"a"``, ``""``, an
  unclosed think block) is unparseable, and a caller counts it as wrong. Held-out accuracy
  (``tasks/evaluation/reward_eval.py``) and the RL outcome reward both use it.
- ``verdict_reward``: the reward of the judge's RL stage (SPEC.md: format + outcome), a ``RewardFn``.
- ``PairwiseJudge``: P(A better) from the letter logits, the reward-model reward of alignment RL.
"""

from __future__ import annotations

import torch

from data_specs.longcot import REWARD_MODEL_DIMENSIONS
from keye_model.answers import join_thinking, split_thinking
from keye_model.model import KeyeForConditionalGeneration
from keye_model.processor import KeyeProcessor
from keye_model.rewards import Reward, RewardSample, think_format
from keye_model.special_tokens import THINK_END, THINK_START
from keye_model.training.examples import PAIR_TASK, judge_prompt

#: The two verdicts, in prompt order.
VERDICTS = ("A", "B")


def parse_verdict(response: str) -> str | None:
    """The verdict of a decoded judge response (think block kept or already stripped), or None.

    ``"<think>\\nA is right\\n</think>\\n\\nA"`` -> ``"A"``; ``"B."`` -> ``"B"``; ``"Response B"``, ``"b"``,
    ``"<think>\\nA is right"`` (cut off) -> None.
    """
    text = response.strip()
    if THINK_START in text and THINK_END not in text:
        return None  # generation stopped inside the assessment: no verdict was given
    _, answer = split_thinking(text)
    answer = answer.removesuffix(".").strip()
    return answer if answer in VERDICTS else None


def verdict_format(response: str, *, thinking: bool) -> bool:
    """``think``: one think block holding an assessment (it names at least one of the judging dimensions,
    ``REWARD_MODEL_DIMENSIONS``), then a parseable verdict; ``no_think``: the verdict alone (no think tags,
    nothing else)."""
    if think_format(response, thinking=thinking).score != 1.0 or parse_verdict(response) is None:
        return False
    reasoning, _ = split_thinking(response)
    return not thinking or any(d in (reasoning or "").lower() for d in REWARD_MODEL_DIMENSIONS)


def verdict_reward(sample: RewardSample) -> Reward:
    """Format + outcome reward of one judge rollout (``sample.reference`` is the better response's letter).

    total = (format + outcome) / 2 with format = ``verdict_format`` and outcome = the parsed verdict names
    the better response, both read by ``parse_verdict``. So a well-formed right verdict scores 1.0 (the rollout
    counts as correct), a well-formed wrong one 0.5; a right verdict in a broken format (``think`` mode with no
    assessment) 0.5, and an unparseable one ("A is better") 0.
    """
    if sample.reference not in VERDICTS or sample.thinking is None:
        raise ValueError(
            f"judge prompt {sample.id}: needs the better letter as reference and a think mode, got "
            f"reference {sample.reference!r}, thinking {sample.thinking!r}"
        )
    outcome = float(parse_verdict(sample.response) == sample.reference)
    form = float(verdict_format(sample.response, thinking=sample.thinking))
    reason = f"format {'ok' if form else 'bad'}; verdict {'right' if outcome else 'wrong'}"
    return Reward(total=(form + outcome) / 2, parts={"format": form, "outcome": outcome}, reason=reason)


def as_judged_response(text: str) -> str:
    """A response in the form the judge was trained on: preference pairs hold full responses, a think block
    first (``<think>\\n\\n</think>\\n\\n`` when no reasoning was written); a bare answer gets the empty block."""
    stripped = text.strip()
    return stripped if THINK_END in stripped else join_thinking("", stripped)


class PairwiseJudge:
    """Callable (query, answer_a, answer_b) -> P(a better), for ``rewards.versus_reference``.

    Both answers are shown as the judge saw responses in training (``as_judged_response``) and the prompt
    names the pairs' task (``PAIR_TASK``): an alignment rollout (a think block) and a bare reference answer
    would otherwise differ in form, which a small judge reads as a difference in quality.
    """

    def __init__(self, model: KeyeForConditionalGeneration, processor: KeyeProcessor, task: str = PAIR_TASK) -> None:
        self.model = model.eval()
        self.processor = processor
        self.task = task
        tok = processor.tokenizer
        ids_a, ids_b = tok.encode("A", add_special_tokens=False), tok.encode("B", add_special_tokens=False)
        if len(ids_a) != 1 or len(ids_b) != 1:
            raise ValueError(f"tokenizer {tok.name_or_path!r} does not encode 'A'/'B' as single tokens")
        self.letters = torch.tensor([ids_a[0], ids_b[0]])

    @torch.no_grad()
    def __call__(self, query: str, answer_a: str, answer_b: str) -> float:
        text = judge_prompt(self.task, query, as_judged_response(answer_a), as_judged_response(answer_b))
        conversation = [{"role": "user", "content": [{"type": "text", "text": text}]}]
        batch = self.processor.build_prompt(conversation, enable_thinking=False)
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        logits = self.model(**batch).logits[0, -1].float()
        return torch.softmax(logits[self.letters.to(logits.device)], dim=0)[0].item()
