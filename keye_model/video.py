"""Video files in and out through the ffmpeg binary: probe, decode at a target fps, encode.

There is no ffprobe here (imageio-ffmpeg ships ffmpeg alone), so ``probe_video`` parses the stream
summary that ``ffmpeg -i FILE`` prints. Decoding samples with ffmpeg's own ``fps`` filter and resizes in
its ``scale`` filter: both are nearly free inside ffmpeg, while piping full-resolution RGB out of it is
what costs. Every command is an argument list (ffmpeg-python compiles one), never a shell string, so
any file name works; local paths get the ``file:`` protocol prefix so a colon in a name is not read as
a protocol.

Timestamps: the ``fps`` filter with ``round=up`` emits frame i at time i / fps from the start of the
stream, showing the input frame on screen at that moment (the default ``round=near`` keeps the last input
frame of each half-open slot, i.e. content up to half an output interval LATER than its timestamp). So a
5.0 s clip at 10 fps decoded at fps 2 gives 10 frames at 0.0, 0.5, ... 4.5 s, namely input frames 0, 5,
... 45; it emits ceil(duration * fps) frames (measured: 3.3 s at 1.3 fps -> 5, at 2.2 fps -> 8).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: Longest tail of ffmpeg's stderr quoted in an error message.
MAX_ERROR_CHARS = 2000


class VideoDecodeError(ValueError):
    """ffmpeg could not read a video; the message names the file and quotes ffmpeg's error."""

    def __init__(self, path: str | os.PathLike, detail: str):
        self.path = str(path)
        self.detail = detail.strip()[-MAX_ERROR_CHARS:]
        super().__init__(f"cannot decode video {self.path!r}: {self.detail or 'ffmpeg gave no error text'}")


def ffmpeg_exe() -> str:
    """The ffmpeg binary: the one on PATH if any, else the one bundled with imageio-ffmpeg."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def has_encoder(exe: str, name: str) -> bool:
    """Whether the ffmpeg at ``exe`` was built with encoder ``name`` (cached per binary)."""
    out = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True, check=False)
    return any(line.split()[1:2] == [name] for line in out.stdout.splitlines())


@dataclass(frozen=True, kw_only=True)
class VideoInfo:
    """What ``ffmpeg -i`` reports about a file's first video stream."""

    path: str
    """The file probed."""
    width: int
    """Display width in pixels (after rotation; ffmpeg auto-rotates when decoding)."""
    height: int
    """Display height in pixels (after rotation)."""
    fps: float | None
    """Average frame rate ("fps", else "tbr"), None when ffmpeg gives neither."""
    duration_s: float | None
    """Container duration in seconds (ffmpeg prints it to 0.01 s), None when unknown."""
    start_s: float
    """Container start time in seconds; timestamps we return are relative to it."""
    rotation: int
    """Display rotation in degrees (0, 90, 180, 270) from the stream's display matrix."""
    num_frames: int | None
    """Frames in the stream when known (a container tag, or ``probe_video(count_frames=True)``)."""

    def num_frames_at(self, fps: float) -> int | None:
        """Frames the ``fps`` filter will emit: ceil(duration * fps); None if the duration is unknown."""
        if self.duration_s is None:
            return None
        return max(1, math.ceil(self.duration_s * fps - 1e-6))


def _source_arg(path: str | os.PathLike) -> str:
    """Check ``path`` exists and return it as an ffmpeg input argument."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {str(path)!r}")
    return "file:" + str(path.resolve())


def _parse_rate(text: str) -> float:
    """'29.97' -> 29.97, '30k' -> 30000.0 (ffmpeg abbreviates large rates with k)."""
    return float(text[:-1]) * 1000 if text.endswith("k") else float(text)


_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_START = re.compile(r"start: (-?\d+(?:\.\d+)?)")
# "160x120" but not the "0x31637661" of a codec tag: both sides at most 5 digits, no word char around.
_SIZE = re.compile(r"(?<![\w.])(\d{1,5})x(\d{1,5})(?!\w)")
_FPS = re.compile(r"([\d.]+k?) fps")
_TBR = re.compile(r"([\d.]+k?) tbr")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees|rotate\s*:\s*(-?\d+)")
_NUM_FRAMES = re.compile(r"NUMBER_OF_FRAMES\S*\s*:\s*(\d+)")


def parse_probe(path: str, stderr: str) -> VideoInfo:
    """Build a VideoInfo from the text of ``ffmpeg -i path``; VideoDecodeError when it has no video.

    Worked example of the lines read (an mp4 made by encode_video):
      Duration: 00:00:05.00, start: 0.000000, bitrate: 23 kb/s
      Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(progressive), 160x120
        [SAR 1:1 DAR 4:3], 21 kb/s, 10 fps, 10 tbr, 10240 tbn (default)
    -> width 160, height 120, fps 10.0, duration 5.0 s, start 0.0.
    """
    lines = stderr.splitlines()
    if not any(line.startswith("Input #") for line in lines):
        raise VideoDecodeError(path, stderr)
    stream_at = next(
        (i for i, line in enumerate(lines) if "Stream #" in line and ": Video:" in line and "attached pic" not in line),
        None,
    )
    if stream_at is None:
        raise VideoDecodeError(path, "no video stream in the file\n" + stderr)
    stream = lines[stream_at]
    size = _SIZE.search(stream.split(": Video:", 1)[1])
    if size is None or int(size.group(1)) == 0 or int(size.group(2)) == 0:
        raise VideoDecodeError(path, f"no frame size in the video stream line: {stream.strip()}")
    width, height = int(size.group(1)), int(size.group(2))
    rate = _FPS.search(stream) or _TBR.search(stream)
    # The stream's own block: indented lines after the Stream line, up to the next Stream line.
    block = []
    for line in lines[stream_at + 1 :]:
        if "Stream #" in line or not line.startswith("    "):
            break
        block.append(line)
    rotation = 0
    for line in block:
        match = _ROTATION.search(line)
        if match:
            rotation = round(float(match.group(1) or match.group(2))) % 360
            break
    if rotation in (90, 270):
        width, height = height, width
    duration = _DURATION.search(stderr)
    start = _START.search(stderr)
    num_frames = next((int(m.group(1)) for m in map(_NUM_FRAMES.search, block) if m), None)
    return VideoInfo(
        path=str(path),
        width=width,
        height=height,
        fps=_parse_rate(rate.group(1)) if rate else None,
        duration_s=(int(duration.group(1)) * 3600 + int(duration.group(2)) * 60 + float(duration.group(3)))
        if duration
        else None,
        start_s=float(start.group(1)) if start else 0.0,
        rotation=rotation,
        num_frames=num_frames,
    )


def probe_video(path: str | os.PathLike, *, count_frames: bool = False) -> VideoInfo:
    """Size, fps, duration and rotation of ``path``'s first video stream, from ``ffmpeg -i``.

    ``count_frames=True`` also counts the stream's frames with a stream-copy pass into the null muxer
    (reads packets, decodes nothing: milliseconds for short clips). FileNotFoundError when the file is
    missing, VideoDecodeError when ffmpeg cannot read it.
    """
    source = _source_arg(path)
    exe = ffmpeg_exe()
    result = subprocess.run([exe, "-hide_banner", "-nostdin", "-i", source], capture_output=True, check=False)
    info = parse_probe(str(path), result.stderr.decode("utf-8", "replace"))
    if count_frames:
        counted = subprocess.run(
            [exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-i", source, "-map", "0:v:0", "-c", "copy",
             "-f", "null", "-", "-progress", "pipe:1"],
            capture_output=True, check=False,
        )  # fmt: skip
        frames = re.findall(rb"^frame=(\d+)", counted.stdout, flags=re.MULTILINE)
        if counted.returncode != 0 or not frames:
            raise VideoDecodeError(path, counted.stderr.decode("utf-8", "replace"))
        info = VideoInfo(**{**info.__dict__, "num_frames": int(frames[-1])})
    return info


class _StderrDrain(threading.Thread):
    """Reads a process's stderr to the end in the background, so a full pipe never blocks ffmpeg."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.chunks = stream, []
        self.start()

    def run(self) -> None:
        for chunk in iter(lambda: self.stream.read(65536), b""):
            self.chunks.append(chunk)

    def text(self) -> str:
        self.join()
        return b"".join(self.chunks).decode("utf-8", "replace")


def uniform_indices(count: int, keep: int) -> np.ndarray:
    """``keep`` of ``range(count)`` spread evenly, first and last included (all when keep >= count).

    Worked example: uniform_indices(10, 4) = round(linspace(0, 9, 4)) = [0, 3, 6, 9].
    """
    if keep >= count:
        return np.arange(count)
    if keep <= 1:
        return np.zeros(min(keep, count), dtype=np.int64)
    return np.round(np.linspace(0, count - 1, keep)).astype(np.int64)


@dataclass(frozen=True, kw_only=True)
class DecodedVideo:
    """Frames sampled from a video at a fixed fps."""

    frames: np.ndarray
    """T x H x W x 3 uint8 RGB."""
    times_s: np.ndarray
    """T float64 timestamps in seconds from the stream start (index / fps)."""
    indices: np.ndarray
    """T int64 positions of the frames in the stream sampled at ``fps`` (before any max_frames cap)."""
    fps: float
    """Sampling rate used."""
    info: VideoInfo
    """The probe of the source file."""


def _run_decode(source: str, path, *, fps: float, size: tuple[int, int], keep) -> tuple[list, list, int]:
    """One ffmpeg pass; ``keep(i) -> bool`` picks stream frames. Returns (frames, indices, total)."""
    import ffmpeg

    height, width = size
    stream = ffmpeg.input(source)["v:0"].filter("fps", fps=fps, round="up")
    stream = stream.filter("scale", width, height, flags="bicubic")
    cmd = ffmpeg.output(stream, "pipe:", format="rawvideo", pix_fmt="rgb24").global_args(
        "-hide_banner", "-nostdin", "-loglevel", "error"
    )
    proc = cmd.run_async(cmd=ffmpeg_exe(), pipe_stdout=True, pipe_stderr=True)
    drain = _StderrDrain(proc.stderr)
    frame_bytes = height * width * 3
    frames, indices, total = [], [], 0
    stopped_early = False
    try:
        while True:
            data = proc.stdout.read(frame_bytes)
            if len(data) < frame_bytes:
                break
            verdict = keep(total)
            if verdict is None:  # nothing more wanted: stop ffmpeg instead of decoding the rest
                stopped_early = True
                break
            if verdict:
                frames.append(np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3))
                indices.append(total)
            total += 1
    except BaseException:
        stopped_early = True
        raise
    finally:
        if stopped_early:
            proc.kill()
        proc.stdout.close()
        returncode = proc.wait()
    errors = drain.text()
    if returncode != 0 and not stopped_early:
        raise VideoDecodeError(path, errors)
    if errors.strip():
        logger.warning("ffmpeg reported errors while decoding %s: %s", path, errors.strip()[-500:])
    return frames, indices, total


def decode_frames(
    path: str | os.PathLike,
    *,
    fps: float,
    size: tuple[int, int] | None = None,
    max_frames: int | None = None,
    indices: Iterable[int] | None = None,
    info: VideoInfo | None = None,
) -> DecodedVideo:
    """Decode ``path`` sampled at ``fps``, resized by ffmpeg to ``size`` = (height, width).

    ``max_frames`` caps the count by uniform subsampling of the sampled stream (uniform_indices);
    ``indices`` instead keeps exactly those stream positions (as returned in ``DecodedVideo.indices``,
    used to reload a plan's frames). Only kept frames are held in memory: the cap is applied while
    streaming, using the frame count predicted from the duration; in the rare case the prediction is
    off, the file is decoded once more with the true count so the subsample stays exactly uniform.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps} (video {str(path)!r})")
    source = _source_arg(path)
    info = info or probe_video(path)
    size = size or (info.height, info.width)
    if indices is not None:
        wanted = set(int(i) for i in indices)
        last = max(wanted, default=-1)
        frames, kept, total = _run_decode(
            source, path, fps=fps, size=size, keep=lambda i: None if i > last else i in wanted
        )
        if len(kept) != len(wanted):
            missing = sorted(wanted - set(kept))[:10]
            raise VideoDecodeError(path, f"stream at {fps} fps has {total} frames; missing indices {missing}")
    else:
        expected = info.num_frames_at(fps)
        if max_frames is None or (expected is not None and expected <= max_frames):
            frames, kept, total = _run_decode(source, path, fps=fps, size=size, keep=lambda i: True)
        else:
            chosen = set(uniform_indices(expected, max_frames).tolist()) if expected else None
            frames, kept, total = _run_decode(
                source, path, fps=fps, size=size, keep=lambda i: True if chosen is None else i in chosen
            )
            if expected != total and total > 0:
                logger.debug("%s: predicted %s frames at %s fps, got %d", path, expected, fps, total)
                if chosen is None:  # duration unknown: everything was kept, subsample now
                    pick = uniform_indices(total, max_frames)
                    frames, kept = [frames[i] for i in pick], [kept[i] for i in pick]
                else:
                    chosen = set(uniform_indices(total, max_frames).tolist())
                    frames, kept, total = _run_decode(source, path, fps=fps, size=size, keep=lambda i: i in chosen)
    if not frames:
        raise VideoDecodeError(path, f"no frames decoded at {fps} fps")
    index_array = np.asarray(kept, dtype=np.int64)
    return DecodedVideo(frames=np.stack(frames), times_s=index_array / fps, indices=index_array, fps=fps, info=info)


def encode_video(
    frames: Iterable[np.ndarray],
    path: str | os.PathLike,
    *,
    fps: float,
    crf: int = 18,
) -> Path:
    """Write RGB uint8 frames (each H x W x 3, all one size) to an mp4 through ffmpeg's stdin.

    libx264 yuv420p when the binary has it (mpeg4 at high quality otherwise); frames with odd sides are
    padded by one pixel at the right/bottom, which yuv420p requires. Returns the path.
    """
    import ffmpeg

    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError(f"no frames to encode into {str(path)!r}")
    first = np.ascontiguousarray(first, dtype=np.uint8)
    if first.ndim != 3 or first.shape[2] != 3:
        raise ValueError(f"frames for {str(path)!r} must be H x W x 3, got shape {first.shape}")
    height, width = first.shape[:2]
    exe = ffmpeg_exe()
    codec = {"vcodec": "libx264", "crf": crf, "preset": "veryfast"} if has_encoder(exe, "libx264") else {
        "vcodec": "mpeg4", "q:v": 2}  # fmt: skip
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", r=fps)
    stream = stream.filter("pad", "ceil(iw/2)*2", "ceil(ih/2)*2")
    cmd = ffmpeg.output(stream, "file:" + str(Path(path).resolve()), pix_fmt="yuv420p", r=fps, **codec)
    cmd = cmd.global_args("-hide_banner", "-loglevel", "error").overwrite_output()
    proc = cmd.run_async(cmd=exe, pipe_stdin=True, pipe_stderr=True)
    drain = _StderrDrain(proc.stderr)
    try:
        proc.stdin.write(first.tobytes())
        for number, frame in enumerate(iterator, start=1):
            frame = np.ascontiguousarray(frame, dtype=np.uint8)
            if frame.shape != first.shape:
                raise ValueError(f"frame {number} for {str(path)!r} has shape {frame.shape}, expected {first.shape}")
            proc.stdin.write(frame.tobytes())
    except BrokenPipeError:
        pass  # ffmpeg died; its stderr below says why
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        returncode = proc.wait()
    errors = drain.text()
    if returncode != 0:
        raise VideoDecodeError(path, f"encoding failed: {errors}")
    return Path(path)


def resize_frames(frames: np.ndarray | Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Resize T x H x W x 3 uint8 frames to ``size`` = (height, width), antialiased bilinear (torch)."""
    import torch

    array = np.asarray(frames)
    if array.shape[1:3] == tuple(size):
        return array
    if not array.flags.writeable:  # torch.from_numpy wants writable memory (it is only read here)
        array = array.copy()
    # NHWC memory seen as NCHW is channels_last, the layout of torch's fast uint8 resize path.
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
    y = torch.nn.functional.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return y.permute(0, 2, 3, 1).contiguous().numpy()
