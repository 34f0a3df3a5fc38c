"""Slow-Fast selection + token budgeting time versus decoding time, for one 384-frame video.

Builds a 192 s video at 2 fps (384 frames, the SPEC's worked-example length) from real photographs:
static shots with sensor noise, slow pans and cuts. Then, in the same run, times
  decode:    keye_model.video.decode_frames at fps 2, scaled by ffmpeg to the max_tokens frame size
             (exactly what plan_video decodes),
  selection: keye_model.slow_fast.plan_frames on those frames (analysis resize, similarity, Slow/Fast,
             binary-search budgeting),
and prints both and their ratio. The last line is ``ratio: X`` (selection / decode); the goal is <= 0.10.
The source is small so building it is quick; a larger source costs ffmpeg more to decode but not the
selection (it works on frames already scaled to at most max_tokens).

    .venv/bin/python benchmarks/bench_slowfast.py [--width 320 --height 240 --repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from keye_model.geometry import fit_size  # noqa: E402
from keye_model.slow_fast import SlowFastConfig, plan_frames  # noqa: E402
from keye_model.video import decode_frames, encode_video, probe_video  # noqa: E402

NUM_FRAMES = 384
FPS = 2.0


def build_frames(height: int, width: int, seed: int = 0):
    """384 frames: shots of 4..24 frames, each static (with noise) or a slow pan over a photograph."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "immunohistochemistry"):
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        photos.append(np.asarray(image.resize((width + 64, height), Image.Resampling.BILINEAR)))
    made = 0
    while made < NUM_FRAMES:
        photo = photos[rng.integers(len(photos))]
        length = min(int(rng.integers(4, 25)), NUM_FRAMES - made)
        pan = int(rng.integers(0, 2)) * 2  # 0: static shot, 2: pans 2 px per frame
        for k in range(length):
            x = min(pan * k, 64)
            frame = photo[:, x : x + width].astype(np.int16) + rng.integers(-3, 4, (height, width, 3), dtype=np.int16)
            yield np.clip(frame, 0, 255).astype(np.uint8)
        made += length


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    config = SlowFastConfig()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.mp4"
        start = time.perf_counter()
        encode_video(build_frames(args.height, args.width), path, fps=FPS)
        print(f"built {path.name}: {NUM_FRAMES} frames {args.width}x{args.height} at {FPS:g} fps "
              f"in {time.perf_counter() - start:.2f} s")  # fmt: skip
        info = probe_video(path)
        size = fit_size(info.height, info.width, config.min_tokens, config.max_tokens)
        decode_s, select_s = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            decoded = decode_frames(path, fps=config.fps, size=size, max_frames=config.max_frames, info=info)
            decode_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            plan = plan_frames(
                decoded.frames, decoded.times_s, config, indices=decoded.indices, source_size=(info.height, info.width)
            )
            select_s.append(time.perf_counter() - start)
    decode, select = statistics.median(decode_s), statistics.median(select_s)
    print(f"decoded {len(decoded.frames)} frames at {size[1]}x{size[0]}; plan: {plan.num_slow} slow + "
          f"{plan.num_fast} fast, {plan.total_tokens} of {plan.budget_tokens} tokens")  # fmt: skip
    print(f"decode (median of {args.repeats}): {decode * 1000:.1f} ms")
    print(f"selection + budgeting (median of {args.repeats}): {select * 1000:.1f} ms")
    print(f"ratio: {select / decode:.3f}")


if __name__ == "__main__":
    main()
