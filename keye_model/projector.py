"""Projector: merge 2x2 neighbouring ViT patches into one LLM token, then an MLP (SPEC section 1).

Per image with an (h, w) patch grid (raster order, as the ViT returns it), the m x m block at merged
position (i, j) is concatenated in the order (0,0), (0,1), (1,0), (1,1) -> one (m*m*D) vector; merged
tokens come out in raster order over the (h/m, w/m) grid. Then LayerNorm(4D, 1e-5) -> Linear(4D, 4D) ->
GELU (exact) -> Linear(4D, LLM width). One output token covers 28x28 pixels.

Worked example (m = 2): an image with grid (h, w) = (4, 6) has patch index r*6 + c. Merged token 0 is
patches [0, 1, 6, 7], token 1 is [2, 3, 8, 9], token 2 is [4, 5, 10, 11], token 3 is [12, 13, 18, 19],
..., token 5 is [16, 17, 22, 23]: 4*6/4 = 6 tokens, a 2x3 merged grid.
In general merged token (i, j) takes patches (m*i + a)*w + (m*j + b) for a, b in [0, m), a major.

Legend: N patches, D ViT width, M merged tokens (N / m^2), E LLM width, I images.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from keye_model.config import ProjectorConfig


def merge_patches(x_ND: torch.Tensor, grid_hw_I2: torch.Tensor, merge_size: int) -> torch.Tensor:
    """(N, D) packed patch features -> (M, m*m*D) merged tokens, image by image (see module docstring)."""
    m = merge_size
    d = x_ND.shape[-1]
    sizes = grid_hw_I2.tolist()
    bad = [(i, h, w) for i, (h, w) in enumerate(sizes) if h % m or w % m]
    if bad:
        raise ValueError(f"image patch grids must be multiples of merge_size {m}; (index, h, w): {bad}")
    outs = []
    for x_hwD, (h, w) in zip(torch.split(x_ND, [h * w for h, w in sizes]), sizes):
        x = x_hwD.reshape(h // m, m, w // m, m, d).permute(0, 2, 1, 3, 4)
        outs.append(x.reshape((h // m) * (w // m), m * m * d))
    if not outs:
        return x_ND.new_zeros(0, m * m * d)
    return torch.cat(outs)


def num_merged_tokens(grid_hw_I2: torch.Tensor, merge_size: int) -> int:
    """LLM tokens the images of grid_hw become: sum(h*w) / merge_size**2."""
    return int(grid_hw_I2.prod(dim=-1).sum()) // (merge_size * merge_size)


class Projector(nn.Module):
    """(N, D) ViT features + grid_hw -> (M, E) LLM-width tokens."""

    def __init__(self, cfg: ProjectorConfig, vision_width: int, text_width: int):
        super().__init__()
        self.cfg = cfg
        merged = cfg.merge_size * cfg.merge_size * vision_width
        self.pre_norm = nn.LayerNorm(merged, eps=cfg.layer_norm_eps)
        self.linear_1 = nn.Linear(merged, merged)
        self.act = ACT2FN[cfg.hidden_act]
        self.linear_2 = nn.Linear(merged, text_width)

    def forward(self, x_ND: torch.Tensor, grid_hw_I2: torch.Tensor) -> torch.Tensor:
        x_MF = merge_patches(x_ND, grid_hw_I2, self.cfg.merge_size)
        return self.linear_2(self.act(self.linear_1(self.pre_norm(x_MF))))
