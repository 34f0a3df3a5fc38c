"""Slow-Fast token allocation (SPEC.md section 2, steps 3-4): how many tokens each Slow and Fast frame gets.

Two rules, chosen by ``SlowFastConfig.allocation`` and looked up once in ``ALLOCATIONS``:

``fit`` (ours, the default): a Slow frame gets T_s tokens, a Fast frame T_f = max(floor(ratio * T_s),
min_tokens), each rounded down to what an aspect-preserving frame with 28-multiple sides gives
(geometry.fit_size: 6 x 7 = 42 tokens for a 364x476 frame asked for 48). T_s is the LARGEST value in
[min_tokens, max_tokens] whose actual total fits the budget (binary search; fit_size is monotone), so the
total never exceeds it. If even min_tokens does not fit, Fast frames are dropped first, then Slow ones,
evenly spread.

``release`` (the released keye-vl-utils 1.5.2, for the ``keye-release`` preset): its search estimates a
Slow frame at T tokens and a Fast one at max(int(ratio * T), min_tokens), ignoring frame-size rounding, and
its bisection returns the FIRST T whose estimate EXCEEDS the budget (or max_tokens). Then the Slow size is
smart_resize(min_tokens, T) and the Fast size smart_resize(min_tokens, max(int(ratio * T_slow),
min_tokens)), T_slow being the Slow frame's actual tokens. The total can exceed the budget, as the
release's does. Where the release would sample fewer frames (it caps a video at budget / min_tokens frames
before classifying), this rule drops frames like ``fit`` does.

Worked example (a 60-frame 480x360 clip, 3 Slow + 57 Fast, budget 3,000). ``release``: the estimate is
3T + 57 * 48 for T < 160, above 3,000 first at T = 89; smart_resize(360, 480, 48, 89) = 224x280 = 8 x 10 =
80 tokens; the Fast limit max(int(0.3 * 80), 48) = 48 gives 168x224 = 6 x 8 = 48 tokens; total 3 * 80 +
57 * 48 = 2,976. (Given a list of frames instead of a file, the release first resizes every frame to its
768-token size, 364x476, and sizes from that: Fast 168x196 = 6 x 7 = 42, total 2,634.) ``fit``: T_s = 107,
Slow fit_size(360, 480, 48, 107) = 224x308 = 8 x 11 = 88, Fast 48; total 3 * 88 + 57 * 48 = 3,000; at
T_s = 108 the Slow frame jumps to 252x336 = 9 x 12 = 108 tokens (3,060 > 3,000).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from keye_model.geometry import fit_size, num_tokens, smart_resize
from keye_model.video import uniform_indices

if TYPE_CHECKING:
    from keye_model.slow_fast import SlowFastConfig

KINDS = ("slow", "fast")

Size = tuple[int, int]


@dataclass(frozen=True, kw_only=True)
class TokenAllocation:
    """Result of allocate_tokens for one frame size."""

    kept: tuple[int, ...]
    """Positions (into the kinds given) of the frames kept; all of them unless the budget forced drops."""
    tokens_per_slow_frame: int
    """T_s: the per-Slow-frame token limit the search settled on (``fit``: the largest that fits)."""
    slow_size: tuple[int, int]
    """(height, width) of every Slow frame."""
    fast_size: tuple[int, int]
    """(height, width) of every Fast frame."""
    slow_tokens: int
    """Actual tokens of one Slow frame (<= T_s under ``fit``)."""
    fast_tokens: int
    """Actual tokens of one Fast frame (<= max(floor(fast_token_ratio * T_s), min_tokens) under ``fit``)."""
    total_tokens: int
    """Sum over kept frames; <= budget_tokens under ``fit``."""
    notes: tuple[str, ...] = ()
    """Human-readable remarks, e.g. what was dropped and why."""


# ---- the two rules -----------------------------------------------------------------------------------------


def _fit_sizes(height: int, width: int, t_s: int, config: SlowFastConfig) -> tuple[Size, Size]:
    """``fit``: Slow at most T_s tokens, Fast at most max(floor(ratio * T_s), min_tokens), both rounded down.

    T_s is first capped at what a Slow frame can actually get from this source (our choice: fit_size never
    enlarges past the source's own 28-grid, so for a 640x360 source Slow frames stop at 23 x 13 = 299
    tokens however large T_s grows, and Fast frames stay at 30% of THAT rather than creeping up to
    floor(0.3 * 768) = 230 tokens).
    """
    slow_cap = num_tokens(*fit_size(height, width, config.min_tokens, config.max_tokens))
    fast_limit = max(config.min_tokens, math.floor(config.fast_token_ratio * min(t_s, slow_cap)))
    return (
        fit_size(height, width, config.min_tokens, t_s),
        fit_size(height, width, config.min_tokens, fast_limit),
    )


def _fit_search(n_slow: int, n_fast: int, height: int, width: int, config: SlowFastConfig) -> int:
    """``fit``: the largest T in [min_tokens, max_tokens] whose actual total fits (total(T) is monotone)."""
    lo, hi = config.min_tokens, config.max_tokens
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _actual_total(n_slow, n_fast, height, width, mid, config) <= config.budget_tokens:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _fit_min_costs(height: int, width: int, config: SlowFastConfig) -> tuple[int, int]:
    """``fit``: actual tokens of a Slow and a Fast frame at T_s = min_tokens."""
    slow, fast = _fit_sizes(height, width, config.min_tokens, config)
    return num_tokens(*slow), num_tokens(*fast)


def _release_fast_limit(t: int, config: SlowFastConfig) -> int:
    return max(int(config.fast_token_ratio * t), config.min_tokens)


def _release_sizes(height: int, width: int, t_s: int, config: SlowFastConfig) -> tuple[Size, Size]:
    """``release``: Slow = smart_resize(min, T_s); Fast from the Slow frame's ACTUAL tokens."""
    slow = smart_resize(height, width, config.min_tokens, t_s)
    fast = smart_resize(height, width, config.min_tokens, _release_fast_limit(num_tokens(*slow), config))
    return slow, fast


def _release_search(n_slow: int, n_fast: int, height: int, width: int, config: SlowFastConfig) -> int:
    """``release``: the first T whose size-blind estimate exceeds the budget (max_tokens if none does).

    Example: 3 Slow + 57 Fast, budget 3,000: estimate(88) = 264 + 2,736 = 3,000 (not above), estimate(89)
    = 3,003 -> 89.
    """

    def estimate(t: int) -> int:
        return n_slow * t + n_fast * _release_fast_limit(t, config)

    lo, hi = config.min_tokens, config.max_tokens
    while lo < hi:
        mid = (lo + hi) // 2
        if estimate(mid) > config.budget_tokens:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _release_min_costs(height: int, width: int, config: SlowFastConfig) -> tuple[int, int]:
    """``release``: the search's own estimate at min_tokens (the release never rounds before it drops)."""
    return config.min_tokens, _release_fast_limit(config.min_tokens, config)


@dataclass(frozen=True)
class AllocationRule:
    """One allocation rule: frame sizes for a T_s, the search for T_s, and per-frame costs at min_tokens."""

    sizes: Callable[[int, int, int, SlowFastConfig], tuple[Size, Size]]
    search: Callable[[int, int, int, int, SlowFastConfig], int]
    min_costs: Callable[[int, int, SlowFastConfig], tuple[int, int]]
    within_budget: bool
    """Whether the rule guarantees total <= budget (asserted for ``fit``)."""


#: ``SlowFastConfig.allocation`` name -> rule.
ALLOCATIONS: dict[str, AllocationRule] = {
    "fit": AllocationRule(_fit_sizes, _fit_search, _fit_min_costs, within_budget=True),
    "release": AllocationRule(_release_sizes, _release_search, _release_min_costs, within_budget=False),
}


# ---- public API ---------------------------------------------------------------------------------------------


def frame_sizes(height: int, width: int, tokens_per_slow_frame: int, config: SlowFastConfig) -> tuple[Size, Size]:
    """((slow h, w), (fast h, w)) for a source of height x width when a Slow frame may use T_s tokens."""
    return ALLOCATIONS[config.allocation].sizes(height, width, tokens_per_slow_frame, config)


def _actual_total(n_slow: int, n_fast: int, height: int, width: int, t_s: int, config: SlowFastConfig) -> int:
    slow, fast = frame_sizes(height, width, t_s, config)
    return n_slow * num_tokens(*slow) + n_fast * num_tokens(*fast)


def _drop_to_fit(slow_at: list[int], fast_at: list[int], height: int, width: int, config: SlowFastConfig):
    """(slow_at, fast_at, notes) after dropping Fast frames first, then Slow ones, if min_tokens cannot fit."""
    budget = config.budget_tokens
    cost_s, cost_f = ALLOCATIONS[config.allocation].min_costs(height, width, config)
    at_min = len(slow_at) * cost_s + len(fast_at) * cost_f
    if at_min <= budget:
        return slow_at, fast_at, []
    if len(slow_at) * cost_s <= budget:
        keep_fast = min(len(fast_at), (budget - len(slow_at) * cost_s) // cost_f)
        keep_slow = len(slow_at)
    else:
        keep_fast, keep_slow = 0, budget // cost_s
    if keep_slow == 0:
        raise ValueError(f"budget of {budget} tokens cannot hold one frame of {cost_s} tokens ({height}x{width})")
    note = (
        f"{len(slow_at)} slow + {len(fast_at)} fast frames need {at_min} tokens at min_tokens="
        f"{config.min_tokens} > budget {budget}: dropped {len(fast_at) - keep_fast} fast and "
        f"{len(slow_at) - keep_slow} slow frames, evenly spread"
    )
    slow_at = [slow_at[i] for i in uniform_indices(len(slow_at), keep_slow)]
    fast_at = [fast_at[i] for i in uniform_indices(len(fast_at), keep_fast)]
    return slow_at, fast_at, [note]


def allocate_tokens(kinds: Sequence[str], height: int, width: int, config: SlowFastConfig) -> TokenAllocation:
    """Search T_s for frames of source size height x width under config.allocation; drop frames if needed.

    Worked example (``fit``, budget 1,000, 448x448 source, ratio 0.3, min 48): kinds = 2 slow + 10 fast.
    T_s = 213: a Slow frame is 392x392 = 14 x 14 = 196 tokens (15 x 15 = 225 > 213), the Fast limit is
    max(floor(0.3 * 213), 48) = 63 -> 196x196 = 7 x 7 = 49 tokens: 2 * 196 + 10 * 49 = 882 <= 1,000.
    T_s = 214: Fast limit 64 -> 224x224 = 64 tokens: 392 + 640 = 1,032 > 1,000. So T_s = 213, total 882.
    """
    kinds = list(kinds)
    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty list of {KINDS}, got {kinds[:5]}...")
    rule = ALLOCATIONS[config.allocation]
    slow_at = [i for i, k in enumerate(kinds) if k == "slow"]
    fast_at = [i for i, k in enumerate(kinds) if k == "fast"]
    slow_at, fast_at, notes = _drop_to_fit(slow_at, fast_at, height, width, config)
    t_s = rule.search(len(slow_at), len(fast_at), height, width, config)
    slow_size, fast_size = rule.sizes(height, width, t_s, config)
    total = len(slow_at) * num_tokens(*slow_size) + len(fast_at) * num_tokens(*fast_size)
    if rule.within_budget:
        assert total <= config.budget_tokens, (total, config.budget_tokens)
    elif total > config.budget_tokens:
        notes.append(
            f"{config.allocation} allocation: {total} tokens exceed the budget of {config.budget_tokens} "
            f"(the released bisection returns the first per-frame count above the budget)"
        )
    return TokenAllocation(
        kept=tuple(sorted(slow_at + fast_at)),
        tokens_per_slow_frame=t_s,
        slow_size=slow_size,
        fast_size=fast_size,
        slow_tokens=num_tokens(*slow_size),
        fast_tokens=num_tokens(*fast_size),
        total_tokens=total,
        notes=tuple(notes),
    )
