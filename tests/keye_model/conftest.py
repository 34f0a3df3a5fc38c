"""Shared fixtures for keye_model tests: real photographs and small videos with known scene cuts.

``photos`` gives a few scikit-image photographs (packaged with scikit-image, no network) as RGB uint8
arrays of one common size. ``scene_video`` builds an mp4 from "segments" -- (photo, number of frames)
pairs -- so the test knows exactly where the cuts are:

    def test_something(photos, scene_video):
        video = scene_video([(photos["astronaut"], 4), (photos["coffee"], 3)], fps=2.0)
        video.path          # Path of the mp4 (in a per-test tmp dir)
        video.cut_indices   # (0, 4): the first frame of each segment, at the encoded fps
        video.num_frames    # 7

A segment's frames are copies of one photo, each re-encoded by the lossy codec (and optionally given
fresh sensor-like noise), i.e. a "static segment". ``build_scene_video`` is the same thing as a plain
function for code that has its own directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

#: (height, width) every fixture photo is resized to: small, so encoding and decoding take milliseconds.
PHOTO_SIZE = (120, 160)
#: scikit-image photographs used; all ship inside the scikit-image wheel.
PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket")


def load_photos(size: tuple[int, int] = PHOTO_SIZE) -> dict[str, np.ndarray]:
    """The PHOTO_NAMES photographs as RGB uint8 arrays of shape (size[0], size[1], 3)."""
    import skimage.data
    from PIL import Image

    out = {}
    for name in PHOTO_NAMES:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        out[name] = np.asarray(image.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.uint8)
    return out


@dataclass(frozen=True, kw_only=True)
class SceneVideo:
    """An encoded test video and where its cuts are."""

    path: Path
    """The mp4 file."""
    fps: float
    """Frame rate it was encoded at; decoding at this fps returns the frames one for one."""
    num_frames: int
    """Frames written."""
    cut_indices: tuple[int, ...]
    """Index of the first frame of every segment (0 included)."""
    frames: np.ndarray
    """The frames that were encoded (T x H x W x 3 uint8), before lossy compression."""


def build_scene_video(
    path: Path,
    segments: list[tuple[np.ndarray, int]],
    *,
    fps: float = 2.0,
    noise_std: float = 0.0,
    seed: int = 0,
) -> SceneVideo:
    """Encode ``segments`` [(frame HxWx3 uint8, count), ...] to ``path`` with keye_model.video.encode_video.

    ``noise_std`` adds independent Gaussian noise (in 0..255 units) to every frame, like a real sensor,
    so "static" frames are not bit-identical even before the codec.
    """
    from keye_model.video import encode_video

    rng = np.random.default_rng(seed)
    frames, cuts = [], []
    for frame, count in segments:
        cuts.append(len(frames))
        for _ in range(count):
            if noise_std > 0:
                noisy = frame.astype(np.float32) + rng.normal(0.0, noise_std, frame.shape)
                frames.append(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
            else:
                frames.append(frame)
    stacked = np.stack(frames)
    encode_video(stacked, path, fps=fps)
    return SceneVideo(path=Path(path), fps=fps, num_frames=len(frames), cut_indices=tuple(cuts), frames=stacked)


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photographs (astronaut, coffee, chelsea, rocket), RGB uint8, all PHOTO_SIZE."""
    return load_photos()


@pytest.fixture
def scene_video(tmp_path):
    """Factory: scene_video(segments, fps=2.0, noise_std=0.0, name="clip.mp4") -> SceneVideo in tmp_path."""

    def build(segments, *, fps: float = 2.0, noise_std: float = 0.0, name: str = "clip.mp4", seed: int = 0):
        return build_scene_video(tmp_path / name, segments, fps=fps, noise_std=noise_std, seed=seed)

    return build
