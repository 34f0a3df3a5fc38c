"""``keye video-plan VIDEO``: show the Slow-Fast plan of a video (which frames, Slow or Fast, how many tokens).

keye video-plan clip.mp4                      # readable table
keye video-plan clip.mp4 --preset keye-release --budget 20000 --json   # one JSON object
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data_specs.schemas import IMAGE_SUFFIXES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "video-plan",
        help="plan Slow/Fast frames and token sizes for a video",
        description="Decode VIDEO at --fps, mark each frame Slow or Fast, and fit the frames into the token budget.",
    )
    parser.add_argument("video", help="path of the video file")
    parser.add_argument("--preset", default="default", help="Slow-Fast preset: default, keye-release or tiny")
    parser.add_argument("--fps", type=float, default=None, help="frames sampled per second (preset's if unset)")
    parser.add_argument("--max-frames", type=int, default=None, help="cap on sampled frames (preset's if unset)")
    parser.add_argument("--budget", type=int, default=None, help="visual token budget (preset's if unset)")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    parser.set_defaults(func=run_video_plan)


def check_video_path(video: str) -> None:
    """Refuse what is not a video file before decoding: a missing path, a directory, an image."""
    path = Path(video)
    if path.is_dir():
        raise ValueError(f"{video} is a directory; give one video file (keye video-plan clip.mp4)")
    if not path.exists():
        raise FileNotFoundError(f"video {video} not found")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise ValueError(f"{video} is an image ({path.suffix}), not a video; video-plan plans the frames of a video")


def frame_token_summary(plan) -> str:
    """The tokens each kind of frame really gets, beside the budget search's T_s (an upper bound).

    Example (a 320x240 clip, default preset): ``slow frames 99 tokens each, fast frames 48 tokens each
    (T_s = 768 is the most a slow frame may get; a frame also keeps the source's shape and size, in whole
    28x28-pixel tokens)``.
    """
    sizes = {kind: sorted({f.tokens for f in plan.frames if f.kind == kind}) for kind in ("slow", "fast")}
    parts = [f"{kind} frames {'/'.join(map(str, tokens))} tokens each" for kind, tokens in sizes.items() if tokens]
    return (
        ", ".join(parts or ["no frames kept"])
        + f" (T_s = {plan.tokens_per_slow_frame} is the most a slow frame may get; a frame also keeps the"
        " source's shape and size, in whole 28x28-pixel tokens)"
    )


def run_video_plan(args: argparse.Namespace) -> int:
    import dataclasses

    from keye_model.slow_fast import SlowFastConfig, plan_video

    check_video_path(args.video)
    config = SlowFastConfig.preset(args.preset)
    overrides = {"fps": args.fps, "max_frames": args.max_frames, "budget_tokens": args.budget}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    plan = plan_video(args.video, config)
    if args.json:
        print(plan.to_json())
        return 0
    print(
        f"{args.video}: {plan.source_width}x{plan.source_height}, preset {config.name}, {plan.fps:g} fps, "
        f"{plan.num_sampled} frames sampled -> {plan.num_slow} slow + {plan.num_fast} fast"
    )
    print(f"tokens: {plan.total_tokens} of budget {plan.budget_tokens}; {frame_token_summary(plan)}")
    for note in plan.notes:
        print(f"note: {note}")
    print(f"{'index':>6} {'time_s':>8} {'kind':<5} {'tokens':>6} {'size':>9} {'similarity':>10}")
    for frame in plan.frames:
        sim = "-" if frame.similarity is None else f"{frame.similarity:.3f}"
        size = f"{frame.height}x{frame.width}"
        print(f"{frame.index:>6} {frame.time:>8.1f} {frame.kind:<5} {frame.tokens:>6} {size:>9} {sim:>10}")
    return 0
