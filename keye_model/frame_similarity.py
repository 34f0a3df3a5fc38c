"""Frame similarity for Slow-Fast selection (SPEC.md section 2): per-patch features, "alike" tests.

Two measures, each a pair (features of frames at the analysis size, which patches are alike against a
reference): ``cell-mad``, our default, and ``hsv-cosine``, the released code's. ``classify_frames``
compares each frame with the latest Slow frame and returns the slow/fast kinds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from keye_model.geometry import TOKEN_SIDE_PX, fit_size
from keye_model.video import resize_frames

if TYPE_CHECKING:
    from keye_model.slow_fast import SlowFastConfig


def analysis_size(height: int, width: int, config: SlowFastConfig) -> tuple[int, int]:
    """Size frames are compared at: aspect-preserving, 28-multiples, at most analysis_max_tokens."""
    return fit_size(height, width, 1, config.analysis_max_tokens)


def _patches(x_THWC: np.ndarray, side: int) -> np.ndarray:
    """T x H x W x C -> T x P x (side*side*C): non-overlapping side x side patches in raster order."""
    t, h, w, c = x_THWC.shape
    x = x_THWC.reshape(t, h // side, side, w // side, side, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(t, (h // side) * (w // side), side * side * c)


def cell_features(frames: np.ndarray, config: SlowFastConfig) -> np.ndarray:
    """cell-mad features: T x P x (cells^2 * 3) float32, the cell means of every analysis patch.

    Worked example: 252x308 frames, analysis_max_tokens 256 -> analysis 252x308 = 9 x 11 = 99 patches;
    cells_per_side 4 -> one antialiased resize to 36x44 (7-pixel cells), so features are T x 99 x 48.
    """
    h_a, w_a = analysis_size(frames.shape[1], frames.shape[2], config)
    c = config.cells_per_side
    grid = resize_frames(frames, (h_a // TOKEN_SIDE_PX * c, w_a // TOKEN_SIDE_PX * c))
    return _patches(grid.astype(np.float32), c)


def alike_cell_mad(feats_KPD: np.ndarray, ref_PD: np.ndarray, config: SlowFastConfig) -> np.ndarray:
    """K x P bool: patch cell means differ by at most patch_tolerance on average."""
    return np.abs(feats_KPD - ref_PD).mean(-1) <= config.patch_tolerance


def rgb_to_hsv(rgb_THWC: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 HSV on OpenCV's 8-bit scale (H in [0, 180), S and V in [0, 255])."""
    rgb = rgb_THWC.astype(np.float32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    delta = v - rgb.min(-1)
    safe = np.where(delta > 0, delta, 1.0)
    hue = np.where(v == r, 60 * (g - b) / safe, np.where(v == g, 120 + 60 * (b - r) / safe, 240 + 60 * (r - g) / safe))
    hue = np.where(delta > 0, np.mod(hue, 360), 0.0) / 2
    sat = np.where(v > 0, 255 * delta / np.where(v > 0, v, 1.0), 0.0)
    return np.stack([hue, sat, v], -1).astype(np.float32)


def hsv_features(frames: np.ndarray, config: SlowFastConfig, chunk: int = 64) -> np.ndarray:
    """hsv-cosine features: T x P x (28*28*3) float32, each patch's HSV vector scaled to unit length."""
    size = analysis_size(frames.shape[1], frames.shape[2], config)
    out = []
    for start in range(0, len(frames), chunk):
        vectors = _patches(rgb_to_hsv(resize_frames(frames[start : start + chunk], size)), TOKEN_SIDE_PX)
        out.append(vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-8))
    return np.concatenate(out)


def alike_hsv_cosine(feats_KPD: np.ndarray, ref_PD: np.ndarray, config: SlowFastConfig) -> np.ndarray:
    """K x P bool: cosine of the HSV patch vectors exceeds patch_cosine_threshold."""
    return np.einsum("kpd,pd->kp", feats_KPD, ref_PD) > config.patch_cosine_threshold


_MEASURES = {"cell-mad": (cell_features, alike_cell_mad), "hsv-cosine": (hsv_features, alike_hsv_cosine)}


def frame_similarity(frame_a: np.ndarray, frame_b: np.ndarray, config: SlowFastConfig | None = None) -> float:
    """Fraction of analysis patches of two H x W x 3 uint8 frames that config.measure calls alike."""
    if config is None:
        from keye_model.slow_fast import SlowFastConfig

        config = SlowFastConfig()
    features, alike = _MEASURES[config.measure]
    feats = features(np.stack([frame_a, frame_b]), config)
    return float(alike(feats[1:], feats[0], config).mean())


def classify_frames(frames: np.ndarray, config: SlowFastConfig) -> tuple[list[str], list[float | None]]:
    """Slow/Fast kind and similarity-to-reference of each of T x H x W x 3 uint8 frames (frame 0: None).

    The reference only changes at a Slow frame, so frames are compared in vectorised chunks against the
    current reference; the first non-similar frame in a chunk becomes Slow and the scan resumes after it.
    The chunk follows the last run length (doubling through long static shots, small through busy ones),
    so little work is spent on frames after a cut.
    """
    features, alike = _MEASURES[config.measure]
    feats = features(np.asarray(frames), config)
    kinds, sims = ["slow"], [None]
    ref, i, chunk = 0, 1, 4
    while i < len(feats):
        sim = alike(feats[i : i + chunk], feats[ref], config).mean(-1).tolist()
        cut = next((k for k, s in enumerate(sim) if s <= config.similarity_threshold), None)
        stop = len(sim) if cut is None else cut + 1
        kinds += ["fast"] * (stop - 1) + (["fast"] if cut is None else ["slow"])
        sims += sim[:stop]
        if cut is not None:
            ref = i + cut
        i += stop
        chunk = min(256, 2 * stop)
    return kinds, sims
