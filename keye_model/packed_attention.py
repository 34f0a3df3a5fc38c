"""Causal attention over packed rows without a dense mask (issue 12 item 4, for long contexts).

A packed row holds several samples, each attending causally to itself only. transformers builds that as an
L x L boolean mask from the position ids (memory L^2 per row: 64 GiB at stage 3's 131,072 tokens). Here
the samples' boundaries travel as ``cu_seq_lens_q`` (the cumulative lengths over the flattened batch, the
name transformers' flash-attention kwargs use) and each sample is attended on its own: torch's varlen
flash kernel on CUDA in fp16/bf16, one causal SDPA per sample otherwise (memory sum of l_i^2).

Worked example: rows [[0 1 2 0 1], [0 1 2 3 4]] (1D position ids) -> samples of 3, 2 and 5 tokens over
the flattened batch -> cu_seq_lens [0, 3, 5, 10], longest 5.

The decoder's attention implementation becomes "keye_sdpa": transformers' SDPA (and its masks) unless the
call carries ``cu_seq_lens_q``, so generation, padding masks and unpacked rows are unchanged.

Legend: B batch, H heads, L sequence, D head dim, S samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import find_packed_sequence_indices, sdpa_mask

#: The attention implementation name registered with transformers.
ATTENTION = "keye_sdpa"


def packed_sequence_lengths(position_ids_BL: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """(cu_seq_lens (S + 1,) int32 over the flattened batch, longest sample), or None when no row is packed.

    A sample starts where the position ids do not step by 1 (transformers' rule) and at every row start.
    """
    if find_packed_sequence_indices(position_ids_BL) is None:
        return None
    steps_BL = torch.diff(position_ids_BL, dim=-1, prepend=position_ids_BL[:, :1] - 1)
    starts_BL = steps_BL != 1
    starts_BL[:, 0] = True
    starts = torch.nonzero(starts_BL.flatten()).flatten()
    ends = torch.cat([starts[1:], starts.new_tensor([position_ids_BL.numel()])])
    cu = torch.cat([starts, ends[-1:]]).to(torch.int32)
    return cu, int((ends - starts).max())


def keye_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' attention signature: q (B, H, L, D), k/v (B, Hkv, L, D) -> ((B, L, H, D), None)."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    assert attention_mask is None, "packed rows carry their boundaries in cu_seq_lens_q, not in a mask"
    batch, heads, length, dim = query.shape
    scaling = kwargs.get("scaling")
    groups = heads // key.shape[1]
    # (B, H, L, D) -> (B*L, H, D): samples become contiguous runs of the flattened batch.
    q_TH = query.transpose(1, 2).reshape(batch * length, heads, dim)
    k_TH = key.transpose(1, 2).reshape(batch * length, key.shape[1], dim)
    v_TH = value.transpose(1, 2).reshape(batch * length, value.shape[1], dim)
    if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16):
        from torch.nn.attention.varlen import varlen_attn

        max_len = int(kwargs["max_length_q"])
        out_TH = varlen_attn(
            q_TH, k_TH, v_TH, cu, cu, max_len, max_len, scale=scaling, window_size=(-1, 0), enable_gqa=groups > 1
        )
    else:
        out_TH = torch.empty_like(q_TH)
        bounds = cu.tolist()
        for start, end in zip(bounds[:-1], bounds[1:]):
            sample = [t[start:end].transpose(0, 1)[None] for t in (q_TH, k_TH, v_TH)]
            out = F.scaled_dot_product_attention(*sample, is_causal=True, scale=scaling, enable_gqa=groups > 1)
            out_TH[start:end] = out[0].transpose(0, 1)
    return out_TH.reshape(batch, length, heads, dim), None


def use_packed_attention(model) -> None:
    """Register ``keye_sdpa`` with transformers and make it ``model``'s attention implementation."""
    AttentionInterface.register(ATTENTION, keye_sdpa_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    model.config._attn_implementation = ATTENTION
