"""Stage 4 model fusion: merge checkpoints trained on different data mixes or as experts.

The report gives no rule; our choices (SPEC.md section 3), all over plain state dicts, configured by a
stage's ``FusionSpec``:
- ``average``: weighted parameter average, weights normalized to sum to 1;
- ``task_arithmetic``: base + sum_k w_k * (expert_k - base);
- ``ties``: TIES-merging of the deltas (trim each delta to its top ``density`` fraction by magnitude,
  elect a sign per parameter entry by the summed trimmed deltas, average the entries that agree with
  it), scaled by ``scale`` and added to the base.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from data_specs.stages import FusionSpec

StateDict = Mapping[str, torch.Tensor]


def _check_keys(base: StateDict, experts: Sequence[StateDict]) -> None:
    for i, expert in enumerate(experts):
        if expert.keys() != base.keys():
            missing = sorted(set(base) ^ set(expert))[:5]
            raise ValueError(f"expert {i} does not match the base model's parameters (e.g. {missing})")


def _weights(n: int, weights: tuple[float, ...]) -> list[float]:
    if not weights:
        return [1.0 / n] * n
    if len(weights) != n:
        raise ValueError(f"expected {n} fusion weights, got {len(weights)}")
    return list(weights)


def _trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    if density >= 1.0 or delta.numel() == 0:
        return delta
    k = max(1, int(round(density * delta.numel())))
    threshold = delta.abs().flatten().kthvalue(delta.numel() - k + 1).values
    return torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta))


def _ties_delta(deltas: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    trimmed = torch.stack([w * _trim(d, density) for d, w in zip(deltas, weights)])
    sign = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(0).clamp_min(1)
    return (trimmed * agree).sum(0) / count


def merge(base: StateDict, experts: Sequence[StateDict], config: FusionSpec) -> dict[str, torch.Tensor]:
    """Merge ``experts`` into ``base``; non-floating tensors (buffers of ints) are taken from the base."""
    if not experts:
        raise ValueError("fusion needs at least one expert model")
    _check_keys(base, experts)
    merged: dict[str, torch.Tensor] = {}
    for name, base_t in base.items():
        if not torch.is_floating_point(base_t):
            merged[name] = base_t.clone()
            continue
        b = base_t.float()
        if config.method == "average":
            models = [b] + [e[name].float() for e in experts]
            out = sum(w * m for w, m in zip(_weights(len(models), config.weights), models))
        else:
            deltas = [e[name].float() - b for e in experts]
            weights = _weights(len(experts), config.weights)
            if config.method == "task_arithmetic":
                out = b + sum(w * d for w, d in zip(weights, deltas))
            else:
                # TIES averages agreeing entries; weights scale each expert's trimmed delta.
                out = b + config.scale * _ties_delta(deltas, [w * len(weights) for w in weights], config.density)
        merged[name] = out.to(base_t.dtype)
    return merged
