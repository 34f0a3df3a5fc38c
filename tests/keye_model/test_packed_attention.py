"""Packed rows without a dense mask: sample boundaries from the position ids, per-sample causal attention
equal to SDPA under transformers' block-causal mask, and the model's packed forward taking that path."""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import create_causal_mask

from keye_model.config import KeyeConfig
from keye_model.decoder import qwen3_config
from keye_model.packed_attention import ATTENTION, keye_sdpa_attention, packed_sequence_lengths


def test_the_worked_example() -> None:
    cu, longest = packed_sequence_lengths(torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]]))
    assert cu.tolist() == [0, 3, 5, 10] and longest == 5
    assert packed_sequence_lengths(torch.arange(6).expand(2, 6)) is None  # nothing packed: plain causal


def test_per_sample_attention_equals_sdpa_under_the_block_causal_mask() -> None:
    config = qwen3_config(KeyeConfig.preset("tiny").text)  # 4 query heads, 2 key/value heads
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1], [0, 1, 0, 1, 2, 3, 4, 5, 6]])
    g = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 9, 32, generator=g)
    key, value = torch.randn(2, 2, 9, 32, generator=g), torch.randn(2, 2, 9, 32, generator=g)
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups, module.training = True, 2, False
    mask = create_causal_mask(config, torch.zeros(2, 9, 1), None, None, position_ids=position_ids)
    assert mask is not None and mask.shape == (2, 1, 9, 9)  # the dense mask transformers would build
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.5)
    cu, longest = packed_sequence_lengths(position_ids)
    got, _ = keye_sdpa_attention(
        module, query, key, value, None, scaling=0.5, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest
    )
    torch.testing.assert_close(got, expected)
    # Without boundaries it is transformers' SDPA as is.
    plain, _ = keye_sdpa_attention(module, query, key, value, None, scaling=0.5)
    torch.testing.assert_close(plain, sdpa_attention_forward(module, query, key, value, None, scaling=0.5)[0])


def test_the_mrope_model_attends_packed_rows_per_sample() -> None:
    from keye_model.model import KeyeForConditionalGeneration

    model = KeyeForConditionalGeneration(KeyeConfig.preset("tiny")).eval()
    assert model.language_model.config._attn_implementation == ATTENTION
    ids = torch.randint(20, 4096, (1, 10))
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]])
    with torch.no_grad():
        packed = model(ids, position_ids=position_ids).logits[0]
        for start, end in ((0, 4), (4, 7), (7, 10)):
            torch.testing.assert_close(packed[start:end], model(ids[:, start:end]).logits[0], rtol=1e-4, atol=1e-5)
