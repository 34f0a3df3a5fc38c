"""scene-videos: short mp4s cut together from real photographs, with known cuts and time-stamped events.

Each video is 2-3 scenes; a scene slowly pans across one skimage photograph (so frames differ, as in a
real shot) and hard-cuts to the next. In one scene a red square (box ``box_yxhw`` in pixels) appears for
a while: a time-stamped event. Cuts and events sit on a 0.5 s grid that the frame rate divides, so the
ground truth is exact.
The record asks either when a cut happens or when the event is visible (``temporal_localization``) and
``meta`` carries the full timeline (``scenes``, ``cuts_s``, ``events``) for later checks.

Worked example: fps 4, scenes of 2.0 s and 1.5 s: frames 0-7 show photo A, frames 8-13 photo B, the cut
is at 2.0 s (frame 8), and an event from 2.5 s to 3.0 s covers frames 10 and 11.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

from data_specs.schemas import Record
from tasks.sources.skimage_photos import PHOTOS, load_photo
from tasks.sources.spec import Collected, SourceSpec

NAME = "scene-videos"
FPS = 4
GRID_S = 0.5
#: Scene lengths to draw from, in seconds (multiples of GRID_S).
SCENE_S = (1.5, 2.0, 2.5, 3.0)
EVENT_LABEL = "a red square"


def _frame_size(max_side_px: int) -> tuple[int, int]:
    """(height, width) of a 4:3 frame with even sides (H.264 needs them) and width <= max_side_px."""
    width = max(32, max_side_px - max_side_px % 16)
    return (width * 3 // 4) // 2 * 2, width


def _pan(photo: np.ndarray, height: int, width: int, num_frames: int, rng: random.Random) -> np.ndarray:
    """``num_frames`` crops of ``photo`` (scaled to cover 110% of the frame), sliding diagonally."""
    scale = 1.1 * max(height / photo.shape[0], width / photo.shape[1])
    big_h, big_w = max(height, round(photo.shape[0] * scale)), max(width, round(photo.shape[1] * scale))
    big = np.asarray(Image.fromarray(photo).resize((big_w, big_h), Image.Resampling.BILINEAR))
    # Centre window 10% larger than the frame: the pan travels at most a tenth of the frame per scene.
    room_h, room_w = min(big_h - height, height // 10), min(big_w - width, width // 10)
    top, left = (big_h - height - room_h) // 2, (big_w - width - room_w) // 2
    y0, x0 = rng.choice([(top, left), (top + room_h, left + room_w)])
    y1, x1 = 2 * top + room_h - y0, 2 * left + room_w - x0
    frames = []
    for i in range(num_frames):
        f = i / max(1, num_frames - 1)
        y, x = round(y0 + (y1 - y0) * f), round(x0 + (x1 - x0) * f)
        frames.append(big[y : y + height, x : x + width])
    return np.stack(frames)


def render(photos: list[str], rng: random.Random, max_side_px: int) -> tuple[np.ndarray, dict]:
    """Frames (T, H, W, 3) uint8 and the timeline ``meta`` for a video of ``photos`` in order."""
    height, width = _frame_size(max_side_px)
    scenes, clips, start = [], [], 0.0
    for name in photos:
        length = rng.choice(SCENE_S)
        clips.append(_pan(load_photo(name, 2 * max_side_px), height, width, round(length * FPS), rng))
        scenes.append({"photo": name, "start_s": start, "end_s": start + length})
        start += length
    frames = np.concatenate(clips)
    scene_index = rng.randrange(len(scenes))
    scene = scenes[scene_index]
    slots = int((scene["end_s"] - scene["start_s"]) / GRID_S)
    first = rng.randrange(slots)
    last = rng.randrange(first, slots) + 1
    event = {
        "label": EVENT_LABEL,
        "scene": scene_index,
        "start_s": scene["start_s"] + first * GRID_S,
        "end_s": scene["start_s"] + last * GRID_S,
    }
    side = max(4, height // 4)
    top, left = rng.randrange(height - side), rng.randrange(width - side)
    event["box_yxhw"] = [top, left, side, side]
    frames[round(event["start_s"] * FPS) : round(event["end_s"] * FPS), top : top + side, left : left + side] = (
        220,
        20,
        20,
    )
    meta = {
        "fps": FPS,
        "num_frames": int(frames.shape[0]),
        "duration_s": start,
        "height": height,
        "width": width,
        "scenes": scenes,
        "cuts_s": [s["start_s"] for s in scenes[1:]],
        "events": [event],
    }
    return frames, meta


def _question(meta: dict, rng: random.Random) -> tuple[str, str]:
    scenes = meta["scenes"]
    if rng.random() < 0.5:
        cut = rng.randrange(1, len(scenes))
        before, after = (scenes[cut - 1]["photo"].replace("_", " "), scenes[cut]["photo"].replace("_", " "))
        return (
            f"At what time does the video cut from the {before} scene to the {after} scene?",
            f"At {scenes[cut]['start_s']:.1f} seconds.",
        )
    event = meta["events"][0]
    return (
        f"When is {event['label']} visible in the video?",
        f"From {event['start_s']:.1f} to {event['end_s']:.1f} seconds.",
    )


def collect(spec: SourceSpec, work_dir: Path) -> Collected:
    """``spec.limit`` videos rendered with ``keye_model.video.encode_video`` into ``work_dir``."""
    from keye_model.video import encode_video

    rng = random.Random(spec.seed)
    records = []
    for index in range(spec.limit):
        photos = rng.sample(PHOTOS, rng.choice((2, 3)))
        frames, meta = render(photos, rng, spec.max_side_px)
        path = work_dir / f"scene-{spec.seed}-{index:04d}.mp4"
        encode_video(frames, path, fps=FPS)
        question, answer = _question(meta, rng)
        records.append(
            Record(
                id=f"{NAME}-{spec.seed}-{index:04d}",
                source=NAME,
                modality="video",
                task="temporal_localization",
                question=question,
                answer=answer,
                media_path=str(path),
                meta=meta,
            )
        )
    return Collected(records=records)
