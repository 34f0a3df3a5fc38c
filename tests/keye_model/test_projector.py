"""The 2x2 patch merge order and the projector MLP."""

from __future__ import annotations

import pytest
import torch

from keye_model.config import ProjectorConfig
from keye_model.projector import Projector, merge_patches, num_merged_tokens


def test_merge_order_by_hand() -> None:
    # Image 0: grid (4, 6), feature = patch index; image 1: grid (2, 2), features 100..103.
    grid = torch.tensor([[4, 6], [2, 2]])
    x = torch.cat([torch.arange(24.0), 100 + torch.arange(4.0)])[:, None]
    merged = merge_patches(x, grid, merge_size=2)
    assert merged.tolist() == [
        [0, 1, 6, 7],
        [2, 3, 8, 9],
        [4, 5, 10, 11],
        [12, 13, 18, 19],
        [14, 15, 20, 21],
        [16, 17, 22, 23],
        [100, 101, 102, 103],
    ]
    assert num_merged_tokens(grid, 2) == 7


def test_merge_keeps_feature_vectors_whole() -> None:
    x = torch.arange(8.0).reshape(4, 2)  # one 2x2 image, D = 2
    assert merge_patches(x, torch.tensor([[2, 2]]), 2).tolist() == [[0, 1, 2, 3, 4, 5, 6, 7]]


def test_odd_grid_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"multiples of merge_size 2; \(index, h, w\): \[\(1, 3, 2\)\]"):
        merge_patches(torch.zeros(10, 1), torch.tensor([[2, 2], [3, 2]]), 2)


def test_projector_shapes_and_layers() -> None:
    proj = Projector(ProjectorConfig(), vision_width=8, text_width=5)
    assert proj.pre_norm.normalized_shape == (32,) and proj.pre_norm.eps == 1e-5
    assert (proj.linear_1.in_features, proj.linear_1.out_features, proj.linear_2.out_features) == (32, 32, 5)
    x = torch.randn(20, 8)
    out = proj(x, torch.tensor([[2, 2], [4, 4]]))
    assert out.shape == (5, 5)
    # exact (erf) GELU, not the tanh approximation
    t = torch.tensor([1.0])
    assert torch.equal(proj.act(t), torch.nn.functional.gelu(t))
