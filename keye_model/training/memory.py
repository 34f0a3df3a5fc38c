"""Per-GPU memory estimate of one stage run, for the dry run's plan (``keye run --dry-run``).

What is counted (bf16 mixed precision on GPUs, as ``runner.deepspeed_config`` sets it, with AdamW):

- weights: 2 bytes per parameter (bf16), frozen ones included;
- gradients: 2 bytes per trainable parameter;
- optimizer: 12 bytes per trainable parameter (fp32 master copy, Adam m and v: the ZeRO paper's K = 12);
- ZeRO splits these over the data-parallel ranks: stage 1 the optimizer states, stage 2 also the
  gradients, stage 3 also the weights;
- activations, rough: the LLM's saved activations for one micro batch without recomputation (the
  runner does none), 34 bytes x tokens x hidden x layers (Korthikanti et al. 2022 for 16-bit
  activations, without the attention-score term that SDPA/flash kernels never store), plus the logits:
  10 bytes x tokens x vocabulary (bf16 logits, their fp32 copy for the loss, its gradient). Tokens =
  micro batch x seq_len (every packed row full).

Not counted: the ViT's activations (they depend on the images: up to 4 patches per visual token), the
MPO reference model and RL rollout caches, DeepSpeed's communication buckets, allocator fragmentation.

Worked example, keye-8b stage 2 on 8 GPUs (ZeRO-2, all 8.64e9 parameters trainable, 8,192 tokens):
weights 2 x 8.64e9 B = 16.1 GiB, gradients 2 x 8.64e9 / 8 = 2.0 GiB, optimizer 12 x 8.64e9 / 8 = 12.1 GiB,
activations 34 x 8192 x 4096 x 36 B + 10 x 8192 x 151936 B = 38.3 + 11.6 = 49.8 GiB; 80.0 GiB in all.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from data_specs.stages import StageSpec
from keye_model.config import KeyeConfig
from keye_model.model import GROUPS, KeyeForConditionalGeneration

GIB = 1024**3

#: Bytes per parameter: bf16 weight, bf16 gradient, fp32 master + Adam m + Adam v.
WEIGHT_BYTES, GRAD_BYTES, OPTIMIZER_BYTES = 2, 2, 12

#: Bytes of saved LLM activations per token, hidden unit and layer; of logits per token and vocabulary entry.
ACTIVATION_BYTES, LOGIT_BYTES = 34, 10


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU of one stage run (see the module docstring for what each term counts)."""

    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        """``80.0 GiB (weights 16.1, grads 2.0, optimizer 12.1, activations 49.8)``."""
        return (
            f"{self.total / GIB:.1f} GiB (weights {self.weights / GIB:.1f}, grads {self.gradients / GIB:.1f}, "
            f"optimizer {self.optimizer / GIB:.1f}, activations {self.activations / GIB:.1f})"
        )


@functools.lru_cache(maxsize=4)  # one meta-device build per model shape, however many stages ask
def parameter_counts(config: KeyeConfig) -> dict[str, int]:
    """Parameters of each module group (``model.GROUPS``), counted on the meta device (no memory)."""
    with torch.device("meta"):
        model = KeyeForConditionalGeneration(config, init=False)
    return {group: model.num_parameters(group) for group in GROUPS}


def estimate_memory(config: KeyeConfig, stage: StageSpec, world_size: int) -> MemoryEstimate:
    """Per-GPU bytes of ``stage`` on ``world_size`` data-parallel ranks for a model of ``config``."""
    if world_size < 1:
        raise ValueError(f"stage {stage.name}: world size must be >= 1, got {world_size}")
    counts = parameter_counts(config)
    total = sum(counts.values())
    trainable = sum(counts[group] for group in stage.trainable)
    zero = stage.zero_stage
    tokens = stage.micro_batch_size * stage.seq_len
    text = config.text
    return MemoryEstimate(
        weights=WEIGHT_BYTES * total / (world_size if zero >= 3 else 1),
        gradients=GRAD_BYTES * trainable / (world_size if zero >= 2 else 1),
        optimizer=OPTIMIZER_BYTES * trainable / world_size,
        activations=ACTIVATION_BYTES * tokens * text.hidden_size * text.num_hidden_layers
        + LOGIT_BYTES * tokens * text.vocab_size,
    )
