"""A trained Keye reward model used as a pairwise judge: P(response A is better than B).

The reward stage trains the model to answer "A" or "B" to ``examples.judge_prompt``; here the judge
reads the next-token logits at the start of its answer and returns softmax over the two letters.
"""

from __future__ import annotations

import torch

from keye_model.model import KeyeForConditionalGeneration
from keye_model.processor import KeyeProcessor
from keye_model.training.examples import judge_prompt


class PairwiseJudge:
    """Callable (query, answer_a, answer_b) -> P(a better), for ``rewards.versus_reference``."""

    def __init__(self, model: KeyeForConditionalGeneration, processor: KeyeProcessor, task: str = "vqa") -> None:
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
        conversation = [
            {"role": "user", "content": [{"type": "text", "text": judge_prompt(self.task, query, answer_a, answer_b)}]}
        ]
        batch = self.processor.build_prompt(conversation, enable_thinking=False)
        batch = {k: v.to(self.model.device) for k, v in batch.items()}
        logits = self.model(**batch).logits[0, -1].float()
        return torch.softmax(logits[self.letters.to(logits.device)], dim=0)[0].item()
