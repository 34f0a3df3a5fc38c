"""CUDA paths (bf16 DeepSpeed engine, varlen ViT attention); skipped cleanly on machines without a GPU."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from data_specs.presets import get_stage
from keye_model.model import KeyeForConditionalGeneration
from keye_model.training.runner import RunConfig, run_stage

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_stage_trains_in_bf16_on_the_gpu(tmp_path, tokenizer_dir, shards):
    spec = dataclasses.replace(get_stage("tiny", "stage2"), num_steps=3)
    result = run_stage(RunConfig(stage=spec, output_dir=str(tmp_path), tokenizer_dir=tokenizer_dir, shards=shards))
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    KeyeForConditionalGeneration.from_pretrained(result.checkpoint_dir)


def test_varlen_vit_attention_matches_the_mask_kernel():
    from keye_model.vision_encoder import block_diagonal_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(10, 2, 16, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    cu = torch.tensor([0, 4, 10], device="cuda")
    torch.testing.assert_close(
        block_diagonal_attention(q, k, v, cu, "varlen"),
        block_diagonal_attention(q, k, v, cu, "mask"),
        atol=2e-2,
        rtol=2e-2,
    )
