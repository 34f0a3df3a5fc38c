"""A checkpoint ready to answer questions: model + processor, greedy decoding, one conversation at a time.

A checkpoint directory is what the stage runner writes: ``keye_config.json``, ``model.safetensors`` and
the tokenizer files beside them (``tokenizer_dir`` overrides where the tokenizer is read from).
Generation is greedy (``do_sample=False``) so a checkpoint's scores are reproducible.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from keye_model.chat import stop_token_ids
from keye_model.model import KeyeForConditionalGeneration
from keye_model.processor import KeyeProcessor, ProcessorConfig
from keye_model.slow_fast import SlowFastConfig
from keye_model.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EvalModel:
    """A loaded checkpoint and the processor that feeds it."""

    model: KeyeForConditionalGeneration
    """The model, in eval mode."""
    processor: KeyeProcessor
    """Turns conversations into tensors and generated ids into text."""
    checkpoint_dir: str
    """Where it was loaded from (for messages and lineage)."""

    @classmethod
    def load(
        cls,
        checkpoint_dir: str | Path,
        *,
        tokenizer_dir: str | Path | None = None,
        video_preset: str = "default",
        device: str = "cpu",
    ) -> EvalModel:
        """Load model and tokenizer; videos are planned with the Slow-Fast preset ``video_preset``."""
        directory = Path(checkpoint_dir)
        if not directory.is_dir():
            raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
        model = KeyeForConditionalGeneration.from_pretrained(directory).to(device).eval()
        tokenizer = load_tokenizer(tokenizer_dir if tokenizer_dir is not None else directory)
        processor_config = dataclasses.replace(
            ProcessorConfig.load(directory), video=SlowFastConfig.preset(video_preset)
        )
        processor = KeyeProcessor(tokenizer, processor_config)
        log.info("loaded %s for evaluation (%d parameters)", directory, model.num_parameters())
        return cls(model=model, processor=processor, checkpoint_dir=str(directory))

    def answer(
        self,
        conversation: list[dict[str, Any]],
        *,
        max_new_tokens: int = 32,
        sample_id: str = "",
        enable_thinking: bool | None = None,
    ) -> str:
        """Greedy answer to the conversation's last user turn (the reasoning, if any, stripped).

        ValueError naming ``sample_id`` when its media cannot be read.
        """
        try:
            batch = self.processor.build_prompt(conversation, enable_thinking=enable_thinking)
        except ValueError as error:
            raise ValueError(f"sample {sample_id}: {error}") from error
        device = self.model.device
        prompt_ids = batch["input_ids"].to(device)
        output = self.model.generate(
            prompt_ids,
            attention_mask=batch["attention_mask"].to(device),
            pixel_values=batch["pixel_values"].to(device) if batch["grid_hw"].numel() else None,
            grid_hw=batch["grid_hw"].to(device) if batch["grid_hw"].numel() else None,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop_token_ids(self.processor.tokenizer),
            pad_token_id=self.processor.tokenizer.pad_token_id,
        )
        _reasoning, answer = self.processor.parse_response(output[0, prompt_ids.shape[1] :])
        return answer


def as_eval_model(checkpoint: str | Path | EvalModel, **load_options: Any) -> EvalModel:
    """``checkpoint`` itself when already loaded, else ``EvalModel.load(checkpoint, **load_options)``."""
    if isinstance(checkpoint, EvalModel):
        return checkpoint
    return EvalModel.load(checkpoint, **load_options)


@torch.no_grad()
def answer_batch(
    evaluator: EvalModel, conversations: list[list[dict[str, Any]]], sample_ids: list[str], *, max_new_tokens: int
) -> list[str]:
    """Greedy answers to several conversations in one batch, the same answers ``EvalModel.answer`` gives.

    Prompts are right-padded into one (B, L) batch; each step runs the whole batch (no KV cache: the
    answers here are a few tokens; the images go through the ViT once) and appends every unfinished
    row's argmax at its own end. Right padding with causal attention means no real token ever attends
    to padding, and position ids count from 0 in every row, so each row computes exactly what it would
    alone. Worked example: prompts of 3 and 5 tokens, width 5 + max_new_tokens; step 1 reads row 0's
    logits at position 2 and row 1's at 4.
    """
    tokenizer = evaluator.processor.tokenizer
    prompts = []
    for conversation, sample_id in zip(conversations, sample_ids):
        try:
            prompts.append(evaluator.processor.build_prompt(conversation))
        except ValueError as error:
            raise ValueError(f"sample {sample_id}: {error}") from error
    lengths = [int(p["input_ids"].shape[1]) for p in prompts]
    ids = torch.full((len(prompts), max(lengths) + max_new_tokens), tokenizer.pad_token_id, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, : lengths[row]] = prompt["input_ids"][0]
    grids = [p["grid_hw"] for p in prompts if p["grid_hw"].numel()]
    device = evaluator.model.device
    pixel_values = torch.cat([p["pixel_values"] for p in prompts if p["grid_hw"].numel()]).to(device) if grids else None
    grid_hw = torch.cat(grids).reshape(-1, 2).to(device) if grids else None
    # the images are the same every step: through the ViT once
    features = evaluator.model.get_visual_features(pixel_values, grid_hw) if grids else None
    stops = set(stop_token_ids(tokenizer))
    ends = list(lengths)
    done = [False] * len(prompts)
    for _ in range(max_new_tokens):
        width = max(ends)
        position_ids = torch.arange(width).expand(len(prompts), width)
        logits = evaluator.model(
            input_ids=ids[:, :width].to(device),
            position_ids=position_ids.to(device),
            pixel_values=pixel_values,
            grid_hw=grid_hw,
            visual_features=features,
        ).logits
        next_logits = logits[torch.arange(len(prompts)), torch.tensor(ends) - 1]
        # As ``KeyeForConditionalGeneration.generate`` does: never emit a visual placeholder.
        next_logits[:, list(evaluator.model.config.placeholder_token_ids)] = float("-inf")
        chosen = next_logits.argmax(-1).tolist()
        for row, token in enumerate(chosen):
            if done[row]:
                continue
            if token in stops:
                done[row] = True
                continue
            ids[row, ends[row]] = token
            ends[row] += 1
        if all(done):
            break
    return [evaluator.processor.parse_response(ids[row, lengths[row] : ends[row]])[1] for row in range(len(prompts))]


@torch.no_grad()
def answer_all(
    evaluator: EvalModel,
    conversations: list[list[dict[str, Any]]],
    sample_ids: list[str],
    *,
    max_new_tokens: int,
    batch_size: int = 64,
) -> list[str]:
    """Greedy answers to many conversations, in order, ``batch_size`` at a time, logging progress."""
    answers: list[str] = []
    for start in range(0, len(conversations), batch_size):
        answers += answer_batch(
            evaluator,
            conversations[start : start + batch_size],
            sample_ids[start : start + batch_size],
            max_new_tokens=max_new_tokens,
        )
        log.info("answered %d / %d", len(answers), len(conversations))
    return answers
