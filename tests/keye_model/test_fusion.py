from __future__ import annotations

import pytest
import torch

from data_specs.stages import FusionSpec
from keye_model.fusion import merge


def test_average_is_weighted_mean():
    base = {"w": torch.tensor([0.0, 2.0]), "step": torch.tensor(7)}
    expert = {"w": torch.tensor([4.0, 0.0]), "step": torch.tensor(9)}
    out = merge(base, [expert], FusionSpec(method="average", weights=(0.75, 0.25)))
    assert out["w"].tolist() == [1.0, 1.5]
    assert out["step"].item() == 7  # integer buffers come from the base


def test_task_arithmetic_adds_weighted_deltas():
    base = {"w": torch.tensor([1.0, 1.0])}
    experts = [{"w": torch.tensor([3.0, 1.0])}, {"w": torch.tensor([1.0, -1.0])}]
    out = merge(base, experts, FusionSpec(method="task_arithmetic", weights=(0.5, 0.5)))
    assert out["w"].tolist() == [2.0, 0.0]


def test_ties_trims_elects_sign_and_averages_agreeing_entries():
    base = {"w": torch.zeros(4)}
    # Deltas: e1 = [ 3, -1, 0.1, 2], e2 = [ 1,  2, -0.2, -4]; density 0.5 keeps the 2 largest of each:
    # e1 -> [3, 0, 0, 2], e2 -> [0, 2, 0, -4]. Summed: [3, 2, 0, -2] -> signs [+, +, 0, -].
    # Agreeing entries: [3], [2], none, [-4] -> merged [3, 2, 0, -4].
    experts = [{"w": torch.tensor([3.0, -1.0, 0.1, 2.0])}, {"w": torch.tensor([1.0, 2.0, -0.2, -4.0])}]
    out = merge(base, experts, FusionSpec(method="ties", density=0.5))
    assert out["w"].tolist() == [3.0, 2.0, 0.0, -4.0]


def test_mismatched_experts_and_bad_config_are_rejected():
    with pytest.raises(ValueError, match="does not match"):
        merge({"a": torch.zeros(1)}, [{"b": torch.zeros(1)}], FusionSpec(method="average"))
    with pytest.raises(ValueError, match="fusion method"):
        FusionSpec(method="soup")
