"""Slow-Fast video encoding (SPEC.md section 2): which sampled frames are Slow or Fast, and their sizes.

1. Decode at ``fps`` (default 2), capped at ``max_frames`` by uniform subsampling (keye_model.video).
2. Frame 0 is Slow. Every later frame is compared with the LATEST Slow frame: both at an analysis size of
   at most ``analysis_max_tokens`` (256) tokens, cut into 28x28 patches; the frame's similarity is the
   fraction of patches that are alike. Similarity > threshold -> Fast; else Slow, the new reference.
3. A Slow frame gets T_s tokens, a Fast frame max(floor(fast_token_ratio * T_s), min_tokens), each rounded
   down to what an aspect-preserving frame with 28-multiple sides gives (geometry.fit_size). T_s is the
   LARGEST value in [min_tokens, max_tokens] whose actual total fits the budget, so the total never exceeds
   it -- unlike the released bisection, which returns the first count above the budget (the
   ``keye-release`` preset reproduces that rule; keye_model.token_allocation holds both).
4. If even min_tokens does not fit, Fast frames are dropped first, then Slow ones, evenly spread.

Worked example (SPEC): 384 frames, 30% Slow -> n_s = 115, n_f = 269, budget 75,000. Ignoring frame-size
rounding, T_s = 383: 115 * 383 + 269 * floor(0.3 * 383) = 44,045 + 269 * 114 = 74,711 <= 75,000, while
T_s = 384 gives 44,160 + 269 * 115 = 75,095 > 75,000. So "about 384 tokens per Slow frame, 115 per
Fast". With real sizes (a 1280x720 source) the search lands on T_s = 410: a Slow frame is
fit_size(720, 1280, 48, 410) = 420x728 = 15 x 26 = 390 tokens, a Fast frame (limit max(floor(0.3 * 410),
48) = 123) 224x392 = 8 x 14 = 112 tokens; 115 * 390 + 269 * 112 = 74,978 <= 75,000.

The released code (``keye-release`` preset) compares raw HSV patch vectors by cosine > 0.7. All HSV values
are positive, so two different scenes with alike colour statistics score as "similar" and the cut is
missed. Our default measure ("cell-mad") compares the LAYOUT inside each patch: every 28x28 patch is
summarised by its 4x4 grid of 7x7-pixel cell means per RGB channel (48 numbers; one antialiased resize of
the whole frame computes them), and a patch is alike when the mean absolute difference of those numbers is
at most ``patch_tolerance`` (0..255 units). Cell means average away codec and sensor noise (high
frequency, a few levels per pixel) while any change of content moves them by tens of levels; a scene
and its mirror image (identical histograms) differ almost everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from keye_model.frame_similarity import classify_frames, frame_similarity
from keye_model.geometry import TOKEN_SIDE_PX, fit_size, num_tokens
from keye_model.token_allocation import ALLOCATIONS, TokenAllocation, allocate_tokens, frame_sizes
from keye_model.video import decode_frames, probe_video, resize_frames

__all__ = [
    "SlowFastConfig",
    "FramePlan",
    "VideoPlan",
    "TokenAllocation",
    "allocate_tokens",
    "classify_frames",
    "frame_similarity",
    "frame_sizes",
    "load_planned_frames",
    "plan_and_load_video",
    "plan_frames",
    "plan_video",
]

MEASURES = ("cell-mad", "hsv-cosine")


@dataclass(frozen=True, kw_only=True)
class SlowFastConfig:
    """Slow-Fast selection and token budgeting; defaults follow the report (SPEC.md section 2)."""

    name: str = "default"
    """Preset this config came from (informational; recorded in plans)."""
    fps: float = 2.0
    """Frames sampled per second of video."""
    max_frames: int = 768
    """Cap on sampled frames (uniform subsampling beyond it); the released utils' FPS_MAX_FRAMES."""
    budget_tokens: int = 75_000
    """Visual token budget B for the whole video; the plan never exceeds it."""
    similarity_threshold: float = 0.95
    """A frame whose similarity to the latest Slow frame is above this is Fast."""
    fast_token_ratio: float = 0.3
    """A Fast frame gets max(floor(ratio * T_s), min_tokens) tokens (before rounding to the 28-pixel grid)."""
    min_tokens: int = 48
    """Fewest tokens asked for any frame, Slow or Fast (rounding to the grid may give a few less: 42 for a
    364x476 frame); when even this does not fit the budget, frames are dropped instead."""
    max_tokens: int = 768
    """Most tokens of any frame; also the size frames are decoded at."""
    analysis_max_tokens: int = 256
    """Frames are compared at an aspect-preserving size of at most this many 28x28 patches."""
    measure: str = "cell-mad"
    """Per-patch measure: "cell-mad" (ours, content layout) or "hsv-cosine" (the released code's)."""
    patch_tolerance: float = 8.0
    """cell-mad: a patch is alike when its cell means differ by at most this on average (0..255 units).
    Measured on the test photographs: re-encoded static copies (x264 crf 18..35, sensor noise sd up to 8)
    differ by at most 2.3; a photo versus its mirror image by a median of 18..70 per patch."""
    cells_per_side: int = 4
    """cell-mad: each patch is summarised by cells_per_side x cells_per_side cell means per channel."""
    patch_cosine_threshold: float = 0.7
    """hsv-cosine: a patch is alike when the cosine of the two HSV patch vectors exceeds this."""
    allocation: str = "fit"
    """Token allocation rule (keye_model.token_allocation): "fit" (ours: the largest T_s whose actual total
    fits, never over budget) or "release" (keye-vl-utils 1.5.2's size-blind bisection, which returns the
    first count above the budget)."""

    def __post_init__(self):
        problems = []
        if not self.fps > 0:
            problems.append(f"fps must be > 0, got {self.fps}")
        if self.max_frames < 1:
            problems.append(f"max_frames must be >= 1, got {self.max_frames}")
        if not 1 <= self.min_tokens <= self.max_tokens:
            problems.append(f"need 1 <= min_tokens <= max_tokens, got {self.min_tokens}, {self.max_tokens}")
        if self.budget_tokens < 1:
            problems.append(f"budget_tokens must be >= 1, got {self.budget_tokens}")
        if not 0 < self.fast_token_ratio <= 1:
            problems.append(f"fast_token_ratio must be in (0, 1], got {self.fast_token_ratio}")
        if self.analysis_max_tokens < 1:
            problems.append(f"analysis_max_tokens must be >= 1, got {self.analysis_max_tokens}")
        if self.measure not in MEASURES:
            problems.append(f"measure must be one of {MEASURES}, got {self.measure!r}")
        if self.allocation not in ALLOCATIONS:
            problems.append(f"allocation must be one of {sorted(ALLOCATIONS)}, got {self.allocation!r}")
        if TOKEN_SIDE_PX % self.cells_per_side:
            problems.append(f"cells_per_side must divide {TOKEN_SIDE_PX}, got {self.cells_per_side}")
        if problems:
            raise ValueError(f"SlowFastConfig {self.name!r}: " + "; ".join(problems))

    @classmethod
    def preset(cls, name: str) -> SlowFastConfig:
        """The named preset: one of PRESETS ("default", "keye-release", "tiny")."""
        if name not in PRESETS:
            raise ValueError(f"unknown Slow-Fast preset {name!r}; choose from {sorted(PRESETS)}")
        return PRESETS[name]()


def keye_release() -> SlowFastConfig:
    """The released keye-vl-utils constants, HSV-cosine measure and token allocation rule.

    65,536 = VIDEO_TOTAL_PIXELS / 28^2. Our reading of its HSV: OpenCV's 8-bit scale (H/2 in [0, 180), S and
    V in [0, 255]).
    """
    return dataclasses.replace(
        SlowFastConfig(),
        name="keye-release",
        budget_tokens=65_536,
        similarity_threshold=0.9,
        measure="hsv-cosine",
        allocation="release",
    )


def tiny() -> SlowFastConfig:
    """A small budget for demos and CPU tests: few frames, few tokens."""
    return dataclasses.replace(SlowFastConfig(), name="tiny", max_frames=16, budget_tokens=512, max_tokens=64)


#: Preset name -> function returning the complete config.
PRESETS: dict[str, Callable[[], SlowFastConfig]] = {
    "default": SlowFastConfig,
    "keye-release": keye_release,
    "tiny": tiny,
}


# ---- plans -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FramePlan:
    """One planned frame."""

    index: int
    """Position in the video sampled at the plan's fps (time ~ index / fps)."""
    time: float
    """Timestamp in seconds from the start of the video."""
    kind: str
    """"slow" or "fast"."""
    tokens: int
    """LLM tokens of this frame: (height / 28) * (width / 28)."""
    height: int
    """Height the frame is resized to (multiple of 28)."""
    width: int
    """Width the frame is resized to (multiple of 28)."""
    similarity: float | None = None
    """Fraction of alike patches versus the latest Slow frame (None for frame 0)."""


@dataclass(frozen=True, kw_only=True)
class VideoPlan:
    """Which frames go to the model, Slow or Fast, at what size; JSON-serialisable."""

    frames: tuple[FramePlan, ...]
    """Kept frames in time order."""
    total_tokens: int
    """Sum of frame tokens; never above budget_tokens under the "fit" allocation (see notes otherwise)."""
    budget_tokens: int
    """The budget planned against."""
    tokens_per_slow_frame: int
    """T_s found by the binary search (under "fit", a Slow frame's actual tokens are <= T_s)."""
    fps: float
    """Sampling rate the indices refer to."""
    source_height: int
    """Height of the source frames the sizes were computed from."""
    source_width: int
    """Width of the source frames."""
    num_sampled: int
    """Frames classified (after the max_frames cap, before any budget drop)."""
    dropped_indices: tuple[int, ...] = ()
    """Indices removed because even min_tokens per frame did not fit."""
    notes: tuple[str, ...] = ()
    """Remarks, e.g. why frames were dropped."""
    config: SlowFastConfig = SlowFastConfig()
    """The config that produced the plan."""

    @property
    def num_slow(self) -> int:
        return sum(f.kind == "slow" for f in self.frames)

    @property
    def num_fast(self) -> int:
        return sum(f.kind == "fast" for f in self.frames)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> VideoPlan:
        data = dict(data)
        data["frames"] = tuple(FramePlan(**f) for f in data["frames"])
        data["config"] = SlowFastConfig(**data.get("config", {}))
        data["dropped_indices"] = tuple(data.get("dropped_indices", ()))
        data["notes"] = tuple(data.get("notes", ()))
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> VideoPlan:
        return cls.from_dict(json.loads(text))


def plan_frames(
    frames: np.ndarray | Sequence[np.ndarray],
    times: Sequence[float],
    config: SlowFastConfig = SlowFastConfig(),
    *,
    indices: Sequence[int] | None = None,
    source_size: tuple[int, int] | None = None,
) -> VideoPlan:
    """Plan already-decoded T x H x W x 3 uint8 frames (pure: no I/O).

    ``indices`` are the frames' positions in the fps-sampled stream (default 0..T-1); ``source_size``
    (height, width) is what frame sizes are computed from (default the frames' own size).
    """
    frames = np.asarray(frames)
    if len(frames) == 0:
        raise ValueError("no frames to plan")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be T x H x W x 3 uint8, got {frames.shape} {frames.dtype}")
    indices = list(range(len(frames))) if indices is None else [int(i) for i in indices]
    if not len(times) == len(indices) == len(frames):
        raise ValueError(f"{len(frames)} frames but {len(times)} times and {len(indices)} indices")
    height, width = source_size or frames.shape[1:3]
    kinds, sims = classify_frames(frames, config)
    alloc = allocate_tokens(kinds, height, width, config)
    sizes = {"slow": alloc.slow_size, "fast": alloc.fast_size}
    planned = tuple(
        FramePlan(
            index=indices[i], time=float(times[i]), kind=kinds[i], tokens=num_tokens(*sizes[kinds[i]]),
            height=sizes[kinds[i]][0], width=sizes[kinds[i]][1], similarity=sims[i],
        )
        for i in alloc.kept
    )  # fmt: skip
    kept = set(alloc.kept)
    return VideoPlan(
        frames=planned,
        total_tokens=alloc.total_tokens,
        budget_tokens=config.budget_tokens,
        tokens_per_slow_frame=alloc.tokens_per_slow_frame,
        fps=config.fps,
        source_height=int(height),
        source_width=int(width),
        num_sampled=len(frames),
        dropped_indices=tuple(indices[i] for i in range(len(frames)) if i not in kept),
        notes=alloc.notes,
        config=config,
    )


def _decode_and_plan(path: str | os.PathLike, config: SlowFastConfig):
    """Decode at fps, resized by ffmpeg to the largest size any frame can get (max_tokens); plan."""
    info = probe_video(path)
    largest = fit_size(info.height, info.width, config.min_tokens, config.max_tokens)
    decoded = decode_frames(path, fps=config.fps, size=largest, max_frames=config.max_frames, info=info)
    try:
        plan = plan_frames(
            decoded.frames, decoded.times_s, config, indices=decoded.indices, source_size=(info.height, info.width)
        )
    except ValueError as exc:
        raise ValueError(f"cannot plan video {str(path)!r}: {exc}") from exc
    return plan, decoded


def _planned_from(decoded, plan: VideoPlan) -> list[np.ndarray]:
    position = {int(index): i for i, index in enumerate(decoded.indices)}
    return [resize_frames(decoded.frames[position[f.index]][None], (f.height, f.width))[0] for f in plan.frames]


def plan_video(path: str | os.PathLike, config: SlowFastConfig = SlowFastConfig()) -> VideoPlan:
    """Decode ``path`` at config.fps, classify Slow/Fast, allocate tokens (see the module docstring)."""
    return _decode_and_plan(path, config)[0]


def plan_and_load_video(path: str | os.PathLike, config: SlowFastConfig = SlowFastConfig()):
    """Decode ``path`` once; return (VideoPlan, planned frames, each H x W x 3 uint8 at its planned size).

    The decode is at the largest size any frame can get, so every planned frame is one torch resize
    away. Memory: T frames of up to max_tokens * 784 pixels (768 frames at 768 tokens: about 1.4 GB).
    """
    plan, decoded = _decode_and_plan(path, config)
    return plan, _planned_from(decoded, plan)


def load_planned_frames(path: str | os.PathLike, plan: VideoPlan) -> list[np.ndarray]:
    """Each planned frame of ``path`` as H x W x 3 uint8 at its planned (height, width), in plan order.

    Decodes once at plan.fps, resized by ffmpeg to the Slow size, keeping only the planned indices;
    Fast frames are then resized down in torch (antialiased bilinear).
    """
    if not plan.frames:
        return []
    largest = max(((f.height, f.width) for f in plan.frames), key=lambda size: size[0] * size[1])
    decoded = decode_frames(path, fps=plan.fps, size=largest, indices=[f.index for f in plan.frames])
    return _planned_from(decoded, plan)
