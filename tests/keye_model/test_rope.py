"""2D vision RoPE against a hand computation."""

from __future__ import annotations

import math

import torch

from keye_model.rope import apply_rope, patch_positions, vision_inv_freq, vision_rope_angles


def test_angles_match_the_worked_example() -> None:
    # head_dim 8, theta 10,000: inv_freq [1, 0.01]; grid 3x4, patch 11 is row 2, col 3.
    assert torch.allclose(vision_inv_freq(8, 10_000.0), torch.tensor([1.0, 0.01]))
    grid = torch.tensor([[3, 4]])
    assert patch_positions(grid)[11].tolist() == [2, 3]
    angles = vision_rope_angles(grid, head_dim=8, theta=10_000.0)
    assert angles.shape == (12, 8)
    torch.testing.assert_close(angles[11], torch.tensor([2, 0.02, 3, 0.03, 2, 0.02, 3, 0.03]))


def test_rotate_half_by_hand() -> None:
    angles = vision_rope_angles(torch.tensor([[3, 4]]), head_dim=8, theta=10_000.0)[11:12]
    q = torch.arange(1.0, 9.0).reshape(1, 1, 8)
    out = apply_rope(q, angles)[0, 0]
    c2, s2 = math.cos(2), math.sin(2)
    assert math.isclose(out[0].item(), 1 * c2 - 5 * s2, rel_tol=1e-5)
    assert math.isclose(out[4].item(), 5 * c2 + 1 * s2, rel_tol=1e-5)
    c3, s3 = math.cos(3), math.sin(3)  # dims 2 and 6 turn with the column
    assert math.isclose(out[2].item(), 3 * c3 - 7 * s3, rel_tol=1e-5)
    assert math.isclose(out[6].item(), 7 * c3 + 3 * s3, rel_tol=1e-5)


def test_scores_depend_only_on_the_2d_offset() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 16), torch.randn(1, 1, 16)
    angles = vision_rope_angles(torch.tensor([[5, 5]]), head_dim=16, theta=100.0)

    def score(a: int, b: int) -> float:  # patch a queries patch b
        return (apply_rope(q, angles[a : a + 1]) * apply_rope(k, angles[b : b + 1])).sum().item()

    # (0,0)->(1,2) and (2,1)->(3,3) share the offset (1,2); (0,0)->(2,1) does not.
    assert math.isclose(score(0, 7), score(11, 18), rel_tol=1e-4, abs_tol=1e-5)
    assert not math.isclose(score(0, 7), score(0, 11), rel_tol=1e-3)
