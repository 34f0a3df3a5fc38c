"""Slow-Fast planning (SPEC.md section 2) on real encoded videos of real photographs."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import numpy as np
import pytest

from keye_model.geometry import num_tokens
from keye_model.slow_fast import (
    SlowFastConfig,
    VideoPlan,
    allocate_tokens,
    classify_frames,
    frame_similarity,
    frame_sizes,
    keye_release,
    load_planned_frames,
    plan_and_load_video,
    plan_frames,
    plan_video,
)
from keye_model.video import decode_frames

DEFAULT = SlowFastConfig()


def mirror(frame: np.ndarray) -> np.ndarray:
    """Left-right mirror image: the same pixels, so the same colour histogram, in another layout."""
    return np.ascontiguousarray(frame[:, ::-1])


def total_at(kinds, height, width, t_s, config):
    slow, fast = frame_sizes(height, width, t_s, config)
    return kinds.count("slow") * num_tokens(*slow) + kinds.count("fast") * num_tokens(*fast)


# ---- selection on real videos -----------------------------------------------------------------------------


def test_slow_exactly_at_cuts_and_fast_on_static_segments(photos, scene_video):
    segments = [(photos["astronaut"], 4), (photos["coffee"], 3), (photos["chelsea"], 5), (photos["rocket"], 2),
                (photos["astronaut"], 3)]  # fmt: skip
    video = scene_video(segments, fps=2.0, noise_std=3.0)
    plan = plan_video(video.path, DEFAULT)
    assert [f.index for f in plan.frames] == list(range(video.num_frames))
    slow = [f.index for f in plan.frames if f.kind == "slow"]
    assert tuple(slow) == video.cut_indices == (0, 4, 7, 12, 14)
    # Re-encoded noisy copies of a static frame are alike in every patch.
    assert all(f.similarity == 1.0 for f in plan.frames if f.kind == "fast")


def test_cuts_found_after_resampling_a_10_fps_video_to_2_fps(photos, scene_video):
    # 10 fps input, cuts at input frames 15 and 25 -> at 1.5 s and 2.5 s -> sampled indices 3 and 5.
    video = scene_video([(photos["rocket"], 15), (photos["chelsea"], 10), (photos["coffee"], 10)], fps=10.0)
    plan = plan_video(video.path, DEFAULT)
    assert len(plan.frames) == 7
    assert [f.index for f in plan.frames if f.kind == "slow"] == [0, 3, 5]
    assert [f.time for f in plan.frames] == pytest.approx([0.5 * i for i in range(7)])


def test_mirror_cut_is_slow_under_default_but_missed_by_released_hsv_cosine(photos, scene_video):
    coffee = photos["coffee"]
    video = scene_video([(coffee, 3), (mirror(coffee), 3)], fps=2.0)
    frames = decode_frames(video.path, fps=2.0).frames
    kinds, sims = classify_frames(frames, DEFAULT)
    assert kinds == ["slow", "fast", "fast", "slow", "fast", "fast"]
    assert sims[3] < 0.5
    # The released measure: raw HSV vectors are all positive, so the mirrored scene looks "similar".
    release_kinds, release_sims = classify_frames(frames, keye_release())
    assert release_kinds == ["slow"] + ["fast"] * 5
    assert release_sims[3] > keye_release().similarity_threshold


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket"])
def test_measures_on_a_photo_and_its_mirror(photos, name):
    photo = photos[name]
    assert np.array_equal(np.sort(photo.reshape(-1, 3), axis=0), np.sort(mirror(photo).reshape(-1, 3), axis=0))
    assert frame_similarity(photo, mirror(photo), DEFAULT) < 0.5
    assert frame_similarity(photo, mirror(photo), keye_release()) > 0.9
    assert frame_similarity(photo, photo, DEFAULT) == 1.0


def test_max_frames_caps_the_plan(photos, scene_video):
    video = scene_video([(photos["coffee"], 5), (photos["rocket"], 5)], fps=2.0)
    plan = plan_video(video.path, dataclasses.replace(DEFAULT, max_frames=4))
    assert [f.index for f in plan.frames] == [0, 3, 6, 9]
    assert [f.kind for f in plan.frames] == ["slow", "fast", "slow", "fast"]
    assert plan.num_sampled == 4


# ---- token allocation -----------------------------------------------------------------------------------


def test_spec_worked_example():
    kinds = ["slow"] * 115 + ["fast"] * 269  # 384 frames, 30% Slow
    alloc = allocate_tokens(kinds, 720, 1280, DEFAULT)
    assert (alloc.tokens_per_slow_frame, alloc.slow_tokens, alloc.fast_tokens) == (410, 390, 112)
    assert alloc.slow_size == (420, 728) and alloc.fast_size == (224, 392)
    assert alloc.total_tokens == 115 * 390 + 269 * 112 == 74_978
    # The idealised arithmetic of the module docstring: T_s = 383 fits, 384 does not.
    assert 115 * 383 + 269 * math.floor(0.3 * 383) <= 75_000 < 115 * 384 + 269 * math.floor(0.3 * 384)


def test_docstring_example_of_allocate_tokens():
    alloc = allocate_tokens(["slow"] * 2 + ["fast"] * 10, 448, 448, dataclasses.replace(DEFAULT, budget_tokens=1000))
    assert (alloc.tokens_per_slow_frame, alloc.slow_tokens, alloc.fast_tokens) == (213, 196, 49)
    assert alloc.total_tokens == 882


def test_budget_never_exceeded_and_search_is_optimal():
    rng = random.Random(0)
    for _ in range(400):
        height, width = rng.randint(60, 2200), rng.randint(60, 2200)
        n_slow, n_fast = rng.randint(1, 400), rng.randint(0, 800)
        config = dataclasses.replace(DEFAULT, budget_tokens=rng.choice([5_000, 20_000, 65_536, 75_000, 200_000]))
        kinds = ["slow"] * n_slow + ["fast"] * n_fast
        rng.shuffle(kinds)
        kinds[0] = "slow"
        alloc = allocate_tokens(kinds, height, width, config)
        kept = [kinds[i] for i in alloc.kept]
        assert alloc.total_tokens == total_at(kept, height, width, alloc.tokens_per_slow_frame, config)
        assert alloc.total_tokens <= config.budget_tokens, (height, width, n_slow, n_fast)
        t_s = alloc.tokens_per_slow_frame
        assert DEFAULT.min_tokens <= t_s <= DEFAULT.max_tokens
        assert t_s == config.max_tokens or total_at(kept, height, width, t_s + 1, config) > config.budget_tokens
        # A Fast frame asks for max(floor(0.3 * T_s), 48) tokens (SPEC step 3) and rounds down from there.
        assert alloc.slow_tokens <= t_s and alloc.fast_tokens <= max(math.floor(0.3 * t_s), DEFAULT.min_tokens)


@pytest.mark.parametrize("height,width", [(720, 1280), (1080, 1920), (480, 640), (1000, 1000), (640, 360)])
def test_fast_frames_get_about_30_percent_of_slow(height, width):
    for budget in (20_000, 40_000, 75_000):
        config = dataclasses.replace(DEFAULT, budget_tokens=budget)
        alloc = allocate_tokens(["slow"] * 40 + ["fast"] * 200, height, width, config)
        # A small source caps Slow frames at its own size (640x360: 299 tokens); Fast is 30% of the cap.
        slow_cap = num_tokens(*frame_sizes(height, width, DEFAULT.max_tokens, DEFAULT)[0])
        target = math.floor(0.3 * min(alloc.tokens_per_slow_frame, slow_cap))
        # Flooring both sides of an a x b token grid loses at most a + b - 1 tokens.
        rows, cols = alloc.fast_size[0] // 28, alloc.fast_size[1] // 28
        assert target - (rows + cols + 1) <= alloc.fast_tokens <= target
        assert 0.2 <= alloc.fast_tokens / alloc.slow_tokens <= 0.36


def test_fast_frames_dropped_first_then_slow_when_min_tokens_cannot_fit():
    kinds = ["slow"] + ["fast"] * 9 + ["slow"] + ["fast"] * 9  # 2 slow + 18 fast
    slow_min, fast_min = (num_tokens(*s) for s in frame_sizes(720, 1280, DEFAULT.min_tokens, DEFAULT))
    # At min_tokens a Fast frame asks for the same 48 tokens as a Slow one (SPEC step 3), both 5 x 9 = 45.
    assert (slow_min, fast_min) == (45, 45)
    # Room for both slow frames and 5 of the 18 fast ones at min_tokens.
    config = dataclasses.replace(DEFAULT, budget_tokens=2 * slow_min + 5 * fast_min + 3)
    alloc = allocate_tokens(kinds, 720, 1280, config)
    kept = [kinds[i] for i in alloc.kept]
    assert kept.count("slow") == 2 and kept.count("fast") == 5
    assert alloc.total_tokens <= config.budget_tokens and "dropped 13 fast and 0 slow" in alloc.notes[0]
    fast_positions = [i for i in alloc.kept if kinds[i] == "fast"]
    assert fast_positions[0] == 1 and fast_positions[-1] == 19  # evenly spread, ends included
    # Not even the slow frames fit: all fast go, then slow ones evenly.
    many = ["slow"] * 10 + ["fast"] * 10
    alloc = allocate_tokens(many, 720, 1280, dataclasses.replace(DEFAULT, budget_tokens=4 * slow_min))
    assert alloc.kept == (0, 3, 6, 9) and alloc.total_tokens <= 4 * slow_min
    with pytest.raises(ValueError, match="cannot hold one frame"):
        allocate_tokens(many, 720, 1280, dataclasses.replace(DEFAULT, budget_tokens=slow_min - 1))


def test_plan_records_dropped_frames(photos):
    frames = np.stack([photos["coffee"]] * 6 + [photos["rocket"]] * 6)
    config = dataclasses.replace(DEFAULT, budget_tokens=150)
    plan = plan_frames(frames, [0.5 * i for i in range(12)], config, source_size=(720, 1280))
    assert plan.total_tokens <= 150 and plan.dropped_indices and plan.notes
    assert {f.index for f in plan.frames} | set(plan.dropped_indices) == set(range(12))


# ---- plans ----------------------------------------------------------------------------------------------


def test_plan_json_round_trip(photos, scene_video):
    video = scene_video([(photos["chelsea"], 3), (photos["astronaut"], 3)], fps=2.0)
    plan = plan_video(video.path, keye_release())
    data = json.loads(plan.to_json())
    assert set(data["frames"][0]) >= {"index", "time", "kind", "tokens", "height", "width"}
    assert data["total_tokens"] == sum(f["tokens"] for f in data["frames"])
    again = VideoPlan.from_json(plan.to_json())
    assert again == plan and again.config.name == "keye-release"


def test_load_planned_frames_gives_each_frame_at_its_size(photos, scene_video):
    video = scene_video([(photos["rocket"], 3), (photos["coffee"], 3)], fps=2.0)
    config = dataclasses.replace(DEFAULT, budget_tokens=300)
    plan = plan_video(video.path, config)
    frames = load_planned_frames(video.path, plan)
    assert [f.shape for f in frames] == [(p.height, p.width, 3) for p in plan.frames]
    assert {p.kind for p in plan.frames} == {"slow", "fast"}
    planned, loaded = plan_and_load_video(video.path, config)
    assert planned == plan
    for a, b in zip(frames, loaded):
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < 6
    # The first planned frame is the rocket photo, resized.
    first = plan.frames[0]
    from keye_model.video import resize_frames

    expected = resize_frames(photos["rocket"][None], (first.height, first.width))[0]
    assert np.abs(frames[0].astype(int) - expected.astype(int)).mean() < 8


def test_presets_and_validation():
    release = SlowFastConfig.preset("keye-release")
    assert (release.budget_tokens, release.similarity_threshold, release.measure) == (65_536, 0.9, "hsv-cosine")
    assert (release.fps, release.min_tokens, release.max_tokens, release.patch_cosine_threshold) == (2.0, 48, 768, 0.7)
    assert SlowFastConfig.preset("default") == DEFAULT
    assert (DEFAULT.budget_tokens, DEFAULT.similarity_threshold, DEFAULT.fast_token_ratio) == (75_000, 0.95, 0.3)
    with pytest.raises(ValueError, match="unknown Slow-Fast preset"):
        SlowFastConfig.preset("nope")
    with pytest.raises(ValueError, match="measure"):
        SlowFastConfig(measure="ssim")
    assert (release.allocation, DEFAULT.allocation) == ("release", "fit")
    with pytest.raises(ValueError, match="allocation"):
        SlowFastConfig(allocation="greedy")


def test_planning_errors_name_the_video(photos, scene_video):
    video = scene_video([(photos["coffee"], 2)], fps=2.0, name="tiny budget.mp4")
    with pytest.raises(ValueError, match="tiny budget.mp4.*cannot hold one frame"):
        plan_video(video.path, dataclasses.replace(DEFAULT, budget_tokens=10))


# ---- the released allocation rule (keye-release) versus ours, when the budget binds ---------------------
# The released keye-vl-utils 1.5.2 rule, written out here in its own terms (pixels, floats) as an independent
# reference: the planner must agree with it, not with itself.
PX = 28 * 28


def release_smart_resize(height, width, min_pixels, max_pixels, factor=28):
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return max(h_bar, factor), max(w_bar, factor)


def release_allocation(n_slow, n_fast, height, width, budget_tokens, min_pixels=48 * PX, max_pixels=768 * PX):
    """(slow size, fast size) by the release's search: the first per-frame count whose estimate EXCEEDS it."""
    min_tokens = int(min_pixels / PX)

    def estimate_pixels(tokens_per_frame):
        fast_tokens = max(int(0.3 * tokens_per_frame), min_tokens)
        return n_slow * tokens_per_frame * PX + n_fast * fast_tokens * PX

    left, right = min_pixels / PX, max_pixels / PX
    while left < right:
        mid = int(left + right) // 2
        if estimate_pixels(mid) > budget_tokens * PX:
            right = mid
        else:
            left = mid + 1
    slow = release_smart_resize(height, width, min_pixels, left * PX)
    slow_tokens = slow[0] * slow[1] / PX
    fast = release_smart_resize(height, width, min_pixels, max(int(slow_tokens * 0.3) * PX, 48 * PX))
    return slow, fast


@pytest.fixture(scope="module")
def clip_480x360(tmp_path_factory):
    """60 frames at 2 fps, 480x360: three 20-frame shots of real photographs (with sensor noise)."""
    from tests.keye_model.conftest import build_scene_video, load_photos

    big = load_photos((360, 480))
    segments = [(big["astronaut"], 20), (big["rocket"], 20), (big["coffee"], 20)]
    return build_scene_video(tmp_path_factory.mktemp("clip") / "clip.mp4", segments, fps=2.0, noise_std=2.0)


def release_sizes_agree(kinds, height, width, budget):
    """(Slow tokens, Fast tokens, total) of keye-release's allocation, after checking it against the reference."""
    alloc = allocate_tokens(kinds, height, width, dataclasses.replace(keye_release(), budget_tokens=budget))
    slow, fast = release_allocation(kinds.count("slow"), kinds.count("fast"), height, width, budget)
    assert (alloc.slow_size, alloc.fast_size) == (slow, fast) and len(alloc.kept) == len(kinds)
    assert alloc.total_tokens == kinds.count("slow") * num_tokens(*slow) + kinds.count("fast") * num_tokens(*fast)
    return alloc.slow_tokens, alloc.fast_tokens, alloc.total_tokens


def test_keye_release_reproduces_the_released_allocation_on_a_clip_when_the_budget_binds(clip_480x360):
    plan = plan_video(clip_480x360.path, dataclasses.replace(keye_release(), budget_tokens=3_000))
    assert [f.index for f in plan.frames if f.kind == "slow"] == [0, 20, 40] and len(plan.frames) == 60
    # The release reads a file at its own size (decord), so sizes are computed from 360x480.
    slow, fast = release_allocation(3, 57, 360, 480, 3_000)
    assert [(f.height, f.width) for f in plan.frames] == [slow if f.kind == "slow" else fast for f in plan.frames]
    # T = 89 is the first count whose estimate 3 * 89 + 57 * 48 = 3,003 exceeds 3,000.
    assert (plan.tokens_per_slow_frame, plan.total_tokens) == (89, 2_976)
    kinds = [f.kind for f in plan.frames]
    budgets = (3_000, 3_500, 4_000, 9_000, 65_536)
    by_budget = {budget: release_sizes_agree(kinds, 360, 480, budget) for budget in budgets}
    assert by_budget[3_000] == (80, 48, 2_976)
    assert by_budget[4_000] == (192, 48, 3_312)
    assert by_budget[65_536] == (221, 63, 4_254)  # loose: every frame at its largest size
    # Given frames instead of a file, the release first resizes each to its 768-token size (364x476) and sizes
    # from that: the figures measured with the release that way.
    assert release_sizes_agree(kinds, 364, 476, 3_000) == (80, 42, 2_634)
    assert release_sizes_agree(kinds, 364, 476, 4_000) == (192, 48, 3_312)


def test_release_rule_matches_the_reference_on_any_source_and_counts():
    rng = random.Random(1)
    for _ in range(300):
        # Small sources (ceil path, may overshoot) and elongated ones (a side floors to 0) included.
        height, width = rng.randint(20, 2200), rng.randint(20, 2200)
        if max(height, width) / min(height, width) > 200:
            continue
        n_slow, n_fast = rng.randint(1, 200), rng.randint(0, 600)
        budget = rng.randint(48 * (n_slow + n_fast), 120_000)  # the release never samples more than fits at 48
        release_sizes_agree(["slow"] * n_slow + ["fast"] * n_fast, height, width, budget)


def test_default_gives_fast_frames_the_48_token_minimum_and_stays_within_budget(clip_480x360):
    plan = plan_video(clip_480x360.path, dataclasses.replace(DEFAULT, budget_tokens=3_000))
    assert [f.index for f in plan.frames if f.kind == "slow"] == [0, 20, 40]
    # floor(0.3 * T_s) = 32 < 48, so Fast frames ask for 48: 168x224 = 6 x 8 (before: 5 x 7 = 35).
    assert {(f.kind, f.tokens) for f in plan.frames} == {("slow", 88), ("fast", 48)}
    assert plan.total_tokens == 3 * 88 + 57 * 48 == 3_000
    rng = random.Random(2)
    for _ in range(300):
        height, width = rng.randint(60, 2200), rng.randint(60, 2200)
        kinds = ["slow"] * rng.randint(1, 100) + ["fast"] * rng.randint(1, 600)
        config = dataclasses.replace(DEFAULT, budget_tokens=rng.randint(3_000, 80_000))
        alloc = allocate_tokens(kinds, height, width, config)
        assert alloc.total_tokens <= config.budget_tokens
        # A Fast frame is never smaller than a frame asked for min_tokens (rounded down).
        at_min = num_tokens(*frame_sizes(height, width, DEFAULT.min_tokens, DEFAULT)[0])
        assert alloc.fast_tokens >= at_min and alloc.slow_tokens >= at_min
