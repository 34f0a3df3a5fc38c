"""Multimodal RoPE (M-RoPE) for the language model (SPEC section 1): 3D position ids and their rotation.

Every LLM token gets three positions (t, h, w). Text tokens advance all three together, so for text alone
M-RoPE is exactly 1D RoPE. Each image or video frame is its own (1, h, w) grid of merged tokens: they
share t = start and take h = start + row, w = start + col, where ``start`` is the position the first
placeholder would have had as text; the text after the image continues at start + max(rows, cols). This
is Qwen2-VL's ``get_rope_index`` rule with a temporal grid of 1 (time is carried by the order of the frames
and their timestamp text). The rotary frequencies are split into the t/h/w sections (``mrope_section``,
[16, 24, 24] of head_dim/2 = 64 at 8B): frequency i is turned by the position of its section's axis.

Worked example, merge size 2, tokens ``a b <img>x6 c d`` with grid_hw (4, 6) patches -> (2, 3) merged tokens:
    token  a  b  img img img img img img  c  d
    t      0  1   2   2   2   2   2   2   5  6
    h      0  1   2   2   2   3   3   3   5  6
    w      0  1   2   3   4   2   3   4   5  6
The image starts where ``img`` #1 would have been as text (2); c follows at 2 + max(2, 3) = 5.

Packed rows: a new sample starts wherever the given 1D position ids do not step by exactly 1 (the rule
transformers uses to build the block-causal mask from them), and each sample is indexed on its own, so
positions restart per sample as they do in 1D. Within a sample, a token's 1D position p becomes p plus the
shift of the images before it (max(rows, cols) - rows * cols each), so 1D ids that do not start at 0 are
kept as offsets.

Legend: B batch, L sequence, I images/frames, F = head_dim/2 rotary frequencies.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding


def text_position_ids(attention_mask_BL: torch.Tensor) -> torch.Tensor:
    """(B, L) 1D positions counting real tokens from 0 (padding gets 0), as transformers' generate makes them."""
    positions = attention_mask_BL.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask_BL == 0, 0)


def mrope_position_ids(
    input_ids_BL: torch.Tensor,
    grid_hw_I2: torch.Tensor | None,
    *,
    placeholder_ids: Sequence[int],
    merge_size: int,
    position_ids_BL: torch.Tensor | None = None,
) -> torch.Tensor:
    """(3, B, L) long t/h/w positions (see the module docstring for the rule and a worked example).

    ``grid_hw_I2`` holds the patch grid of every image/frame in the order of their placeholders read
    row-major over the batch (as the model consumes them); one grid covers (h/merge)*(w/merge)
    consecutive placeholder tokens. ``position_ids_BL`` are the 1D positions (packed rows restart them
    per sample); arange(L) per row when None. ValueError when the placeholders and the grids disagree.
    """
    num_rows, length = input_ids_BL.shape
    device = input_ids_BL.device
    if position_ids_BL is None:
        position_ids_BL = torch.arange(length, device=device).expand(num_rows, length)
    position_ids_BL = position_ids_BL.to(device=device, dtype=torch.long).expand(num_rows, length)
    out_3BL = position_ids_BL[None].repeat(3, 1, 1)
    if not placeholder_ids:
        return out_3BL
    visual_BL = torch.isin(input_ids_BL, torch.tensor(list(placeholder_ids), device=device))
    grids = [] if grid_hw_I2 is None else [(h // merge_size, w // merge_size) for h, w in grid_hw_I2.tolist()]
    # A sample starts where the 1D positions do not step by 1 (transformers' packed-sequence rule).
    steps_BL = torch.diff(position_ids_BL, dim=-1, prepend=position_ids_BL[:, :1] - 1)
    sample_starts = [torch.nonzero(row != 1).flatten().tolist() for row in steps_BL]
    grid_index = 0
    for b in range(num_rows):
        placeholders = torch.nonzero(visual_BL[b]).flatten().tolist()
        i = 0
        while i < len(placeholders):
            if grid_index >= len(grids):
                raise ValueError(
                    f"M-RoPE: row {b} has visual placeholders from token {placeholders[i]} on, but grid_hw holds "
                    f"only {len(grids)} images/frames"
                )
            rows, cols = grids[grid_index]
            count = rows * cols
            start = placeholders[i]
            end = start + count
            if i + count > len(placeholders) or placeholders[i + count - 1] != end - 1:
                raise ValueError(
                    f"M-RoPE: image/frame {grid_index} (merged grid {rows}x{cols}) needs {count} consecutive "
                    f"placeholders from token {start} of row {b}"
                )
            starts = sample_starts[b]
            nxt = bisect.bisect_right(starts, start)
            sample_end = starts[nxt] if nxt < len(starts) else length
            if sample_end < end:
                raise ValueError(
                    f"M-RoPE: image/frame {grid_index} in row {b} (tokens {start}..{end - 1}) crosses a sample "
                    f"boundary at token {sample_end} of the packed position ids"
                )
            base = out_3BL[0, b, start].clone()
            out_3BL[0, b, start:end] = base
            out_3BL[1, b, start:end] = base + torch.arange(rows, device=device).repeat_interleave(cols)
            out_3BL[2, b, start:end] = base + torch.arange(cols, device=device).repeat(rows)
            out_3BL[:, b, end:sample_end] += max(rows, cols) - count
            i += count
            grid_index += 1
    if grid_index != len(grids):
        raise ValueError(f"M-RoPE: grid_hw holds {len(grids)} images/frames but the placeholders fill {grid_index}")
    return out_3BL


class MultimodalRotaryEmbedding(Qwen3RotaryEmbedding):
    """Qwen3's rotary module taking (3, B, L) t/h/w position ids; (B, L) ids are text (t = h = w).

    The ``inv_freq`` buffer, ``rope_type`` and ``attention_scaling`` are Qwen3's, so
    ``keye_model.decoder.set_rope_theta`` changes the base of both kinds alike.
    """

    def __init__(self, config, mrope_section: Sequence[int]):
        super().__init__(config)
        self.mrope_section = tuple(int(n) for n in mrope_section)
        if sum(self.mrope_section) != self.inv_freq.numel():
            raise ValueError(
                f"mrope_section {list(self.mrope_section)} sums to {sum(self.mrope_section)}, but the decoder "
                f"has {self.inv_freq.numel()} rotary frequencies (head_dim / 2)"
            )

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if position_ids.ndim == 2:
            position_ids = position_ids[None].expand(3, -1, -1)
        assert position_ids.shape[0] == 3, f"M-RoPE position ids must be (3, B, L), got {tuple(position_ids.shape)}"
        inv_freq = self.inv_freq.to(device=x.device, dtype=torch.float)
        freqs_3BLF = position_ids[..., None].float() * inv_freq
        # Frequency section s (t, h, w in turn) is turned by axis s's positions.
        sections = freqs_3BLF.split(self.mrope_section, dim=-1)
        freqs_BLF = torch.cat([part[axis] for axis, part in enumerate(sections)], dim=-1)
        emb = torch.cat((freqs_BLF, freqs_BLF), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)
