"""``keye video-plan`` through keye_cli.main.main and through the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keye_cli.main import main


@pytest.fixture(scope="module")
def two_scene_video(tmp_path_factory) -> Path:
    """3 s at 2 fps: coffee for 2 s, then chelsea for 1 s (a cut at sampled frame 4)."""
    import skimage.data
    from PIL import Image

    from keye_model.video import encode_video

    def photo(name):
        return np.asarray(Image.fromarray(getattr(skimage.data, name)()).resize((160, 120)))

    path = tmp_path_factory.mktemp("cli") / "two scenes.mp4"
    encode_video([photo("coffee")] * 4 + [photo("chelsea")] * 2, path, fps=2)
    return path


def test_json_output_is_one_object(two_scene_video, capsys):
    assert main(["video-plan", str(two_scene_video), "--json", "--budget", "500"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [f["kind"] for f in plan["frames"]] == ["slow", "fast", "fast", "fast", "slow", "fast"]
    assert [f["index"] for f in plan["frames"]] == list(range(6))
    assert [f["time"] for f in plan["frames"]] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert plan["total_tokens"] == sum(f["tokens"] for f in plan["frames"]) <= 500


def test_table_output_and_options(two_scene_video, capsys):
    argv = ["video-plan", str(two_scene_video), "--preset", "keye-release", "--fps", "1", "--max-frames", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "preset keye-release" in out and "1 fps" in out and "2 frames sampled" in out
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [row[2] for row in rows][0] == "slow" and len(rows) == 2


def test_missing_file_is_a_clean_error(tmp_path, capsys):
    assert main(["video-plan", str(tmp_path / "gone.mp4")]) == 2
    assert "gone.mp4" in capsys.readouterr().err


def test_module_entry_point(two_scene_video):
    result = subprocess.run(
        [sys.executable, "-m", "keye_cli.main", "video-plan", str(two_scene_video), "--json"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert json.loads(result.stdout)["total_tokens"] > 0


def test_installed_console_script(two_scene_video):
    script = Path(sys.executable).with_name("keye")
    if not script.exists():
        pytest.skip(f"console script {script} not installed (pip install -e . creates it)")
    result = subprocess.run(
        [str(script), "video-plan", str(two_scene_video), "--json"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["frames"]) == 6


def test_the_summary_says_what_each_frame_really_gets(two_scene_video, capsys):
    """T_s is the search's upper bound; the line shows the tokens the plan's frames really get."""
    assert main(["video-plan", str(two_scene_video)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    slow = {int(row[3]) for row in rows if row[2] == "slow"}
    fast = {int(row[3]) for row in rows if row[2] == "fast"}
    (summary,) = [line for line in out.splitlines() if line.startswith("tokens:")]
    assert f"slow frames {'/'.join(map(str, sorted(slow)))} tokens each" in summary, summary
    assert f"fast frames {'/'.join(map(str, sorted(fast)))} tokens each" in summary, summary
    assert "T_s = 768 is the most" in summary and max(slow) < 768  # a 160x120 clip: frames stay small


def test_a_directory_or_an_image_is_refused_with_what_it_is(tmp_path, capsys):
    from PIL import Image

    assert main(["video-plan", str(tmp_path)]) == 2
    assert "is a directory; give one video file" in capsys.readouterr().err
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), "red").save(image)
    assert main(["video-plan", str(image)]) == 2
    assert "is an image (.png), not a video" in capsys.readouterr().err
