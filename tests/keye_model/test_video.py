"""keye_model.video against the real ffmpeg binary and real photographs."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from keye_model.video import (
    VideoDecodeError,
    decode_frames,
    encode_video,
    ffmpeg_exe,
    probe_video,
    resize_frames,
    uniform_indices,
)


@pytest.fixture(scope="module")
def rolling_video(tmp_path_factory, photos):
    """5.0 s at 10 fps: frame k is the astronaut rolled 3k pixels sideways, so every frame is distinct."""
    frames = np.stack([np.roll(photos["astronaut"], 3 * k, axis=1) for k in range(50)])
    path = tmp_path_factory.mktemp("video") / "rolling.mp4"
    encode_video(frames, path, fps=10)
    return path, frames


def nearest_source(decoded: np.ndarray, sources: np.ndarray) -> int:
    errors = np.abs(sources.astype(np.int32) - decoded.astype(np.int32)).mean(axis=(1, 2, 3))
    return int(np.argmin(errors))


def test_probe_reports_stream_facts(rolling_video):
    path, _ = rolling_video
    info = probe_video(path, count_frames=True)
    assert (info.height, info.width) == (120, 160)
    assert info.fps == pytest.approx(10.0)
    assert info.duration_s == pytest.approx(5.0, abs=0.02)
    assert info.rotation == 0
    assert info.num_frames == 50
    assert info.num_frames_at(2.0) == 10


def test_decode_at_fps_gives_count_timestamps_and_the_nearest_frames(rolling_video):
    path, sources = rolling_video
    video = decode_frames(path, fps=2.0)
    assert video.frames.shape == (10, 120, 160, 3) and video.frames.dtype == np.uint8
    np.testing.assert_allclose(video.times_s, np.arange(10) * 0.5)
    # Sampled frame i at i/2 s is source frame 5i (10 fps): the fps filter picked the right frames.
    assert [nearest_source(frame, sources) for frame in video.frames] == [5 * i for i in range(10)]


def test_decode_resizes_inside_ffmpeg(rolling_video):
    path, _ = rolling_video
    video = decode_frames(path, fps=1.0, size=(56, 84))
    assert video.frames.shape == (5, 56, 84, 3)


def test_max_frames_subsamples_uniformly(rolling_video):
    path, sources = rolling_video
    video = decode_frames(path, fps=2.0, max_frames=4)
    assert video.indices.tolist() == [0, 3, 6, 9]
    np.testing.assert_allclose(video.times_s, [0.0, 1.5, 3.0, 4.5])
    assert [nearest_source(frame, sources) for frame in video.frames] == [0, 15, 30, 45]


def test_decode_selected_indices(rolling_video):
    path, sources = rolling_video
    video = decode_frames(path, fps=2.0, indices=[7, 2])
    assert video.indices.tolist() == [2, 7]
    assert [nearest_source(frame, sources) for frame in video.frames] == [10, 35]
    with pytest.raises(VideoDecodeError, match="missing indices"):
        decode_frames(path, fps=2.0, indices=[3, 40])


def test_uniform_indices_worked_example():
    assert uniform_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert uniform_indices(3, 5).tolist() == [0, 1, 2]
    assert len(set(uniform_indices(1000, 999).tolist())) == 999


def test_file_name_with_spaces_and_quotes(tmp_path, photos):
    path = tmp_path / 'it\'s a "clip" [v1]: $HOME.mp4'
    encode_video([photos["coffee"]] * 4, path, fps=2)
    video = decode_frames(path, fps=2.0)
    assert video.frames.shape == (4, 120, 160, 3)
    assert probe_video(path).width == 160


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "no such clip.mp4"
    with pytest.raises(FileNotFoundError, match="no such clip.mp4"):
        probe_video(missing)
    with pytest.raises(FileNotFoundError, match="no such clip.mp4"):
        decode_frames(missing, fps=2.0)


def test_corrupt_file_names_the_path_and_ffmpegs_error(tmp_path, rolling_video):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"this is not a video" * 100)
    with pytest.raises(VideoDecodeError, match="garbage.mp4") as caught:
        decode_frames(garbage, fps=2.0)
    assert "Invalid data" in str(caught.value)
    assert isinstance(caught.value, ValueError)
    # An mp4 cut in half loses its index (moov atom), which ffmpeg reports.
    truncated = tmp_path / "truncated.mp4"
    data = rolling_video[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoDecodeError, match="truncated.mp4"):
        probe_video(truncated)


def test_rotated_video_reports_display_size(tmp_path, rolling_video):
    rotated = tmp_path / "rotated.mp4"
    subprocess.run(
        [ffmpeg_exe(), "-y", "-loglevel", "error", "-display_rotation", "90", "-i", str(rolling_video[0]),
         "-c", "copy", str(rotated)],
        check=True,
    )  # fmt: skip
    info = probe_video(rotated)
    assert info.rotation == 90 and (info.height, info.width) == (160, 120)
    assert decode_frames(rotated, fps=1.0).frames.shape == (5, 160, 120, 3)


def test_encode_pads_odd_sizes_and_rejects_mixed_shapes(tmp_path, photos):
    odd = photos["chelsea"][:119, :159]
    encode_video([odd] * 3, tmp_path / "odd.mp4", fps=2)
    assert probe_video(tmp_path / "odd.mp4").height == 120
    with pytest.raises(ValueError, match="frame 1"):
        encode_video([photos["chelsea"], odd], tmp_path / "mixed.mp4", fps=2)


def test_resize_frames_keeps_content(photos):
    small = resize_frames(photos["rocket"][None], (60, 80))[0]
    assert small.shape == (60, 80, 3)
    reference = photos["rocket"].reshape(60, 2, 80, 2, 3).mean(axis=(1, 3))
    assert np.abs(small.astype(float) - reference).mean() < 4
