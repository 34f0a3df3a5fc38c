"""2D rotary position embedding for the vision encoder (SPEC section 1).

Each patch knows its (row, col) in its own image's patch grid. Half of every head is rotated by the row,
the other half by the column: with rotary dim r = head_dim/2 per axis and inv_freq = theta^(-(0,2,..,r-2)/r)
(r/2 frequencies), the per-patch angles are concat(row*inv_freq, col*inv_freq) (r values), repeated
to head_dim, and applied in the rotate-half convention (dim i pairs with dim i + head_dim/2).

Worked example (head_dim 8, theta 10,000): r = 4, inv_freq = [10000^(0/4), 10000^(-2/4)] = [1, 0.01].
A patch at row 2, col 3 gets angles [2, 0.02, 3, 0.03] -> repeated [2, 0.02, 3, 0.03, 2, 0.02, 3, 0.03].
For q = (q0..q7) the rotated q0' = q0*cos(2) - q4*sin(2) and q4' = q4*cos(2) + q0*sin(2); q2 and q6 turn
by 3 rad (the column), q1/q5 by 0.02 and q3/q7 by 0.03.

Legend: N patches in the packed sequence, H heads, Hd head dim, I images.
"""

from __future__ import annotations

import torch


def vision_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """(head_dim/4,) float32 inverse frequencies shared by the row and the column axis."""
    assert head_dim % 4 == 0, f"2D RoPE needs head_dim divisible by 4, got {head_dim}"
    rotary_dim = head_dim // 2
    return 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)).float()


def patch_positions(grid_hw_I2: torch.Tensor) -> torch.Tensor:
    """(N, 2) long (row, col) of every patch, raster order within each image, images in order.

    Example: grid_hw [[2, 3]] -> rows [0,0,0,1,1,1], cols [0,1,2,0,1,2].
    """
    parts = []
    for h, w in grid_hw_I2.tolist():
        rows = torch.arange(h).repeat_interleave(w)
        cols = torch.arange(w).repeat(h)
        parts.append(torch.stack([rows, cols], dim=-1))
    if not parts:
        return torch.zeros(0, 2, dtype=torch.long)
    return torch.cat(parts).to(grid_hw_I2.device)


def vision_rope_angles(grid_hw_I2: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """(N, head_dim) float32 rotation angles of every patch (see the module docstring)."""
    inv_freq = vision_inv_freq(head_dim, theta).to(grid_hw_I2.device)
    pos_N2 = patch_positions(grid_hw_I2).float()
    half_Nr = torch.cat([pos_N2[:, :1] * inv_freq, pos_N2[:, 1:] * inv_freq], dim=-1)
    return torch.cat([half_Nr, half_Nr], dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x_NHHd: torch.Tensor, angles_NHd: torch.Tensor) -> torch.Tensor:
    """Rotate (N, H, Hd) queries or keys by per-patch angles (N, Hd); math in float32."""
    cos = angles_NHd.cos()[:, None, :]
    sin = angles_NHd.sin()[:, None, :]
    x = x_NHHd.float()
    return (x * cos + rotate_half(x) * sin).to(x_NHHd.dtype)
