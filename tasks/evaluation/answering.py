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
    """Greedy answers to several conversations in one batch, the answers ``EvalModel.answer`` gives each alone.

    Prompts are left-padded into one batch (``KeyeProcessor.build_prompts``) and decoded by the model's
    ``generate``: the images go through the ViT once and each new token reads the KV cache, so a step
    costs one token per row, not the whole prompt again (a judge's 128-token assessment took 30 s a
    checkpoint without the cache). Padding is masked out and each row's positions count from its own
    first real token, so every row computes what it would alone, up to float rounding.
    """
    tokenizer = evaluator.processor.tokenizer
    batch = evaluator.processor.build_prompts(conversations, sample_ids=sample_ids)
    media = batch["grid_hw"].numel() > 0
    device = evaluator.model.device
    output = evaluator.model.generate(
        batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        pixel_values=batch["pixel_values"].to(device) if media else None,
        grid_hw=batch["grid_hw"].to(device) if media else None,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    width = batch["input_ids"].shape[1]
    return [evaluator.processor.parse_response(output[row, width:])[1] for row in range(len(conversations))]


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
