"""A user's folder full of bad inputs goes through collection and validation: the good items pass, every bad
one is in the quarantine file with a reason naming it, and nothing crashes or disappears."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tasks.sources import SourceSpec, collect_records
from tasks.validate import validate_records
from tests.tasks.test_validate import png_header

QUOTED = 'it\'s a "quoted" name.jpg'


def caption(media: Path, text: str) -> None:
    media.with_suffix(".txt").write_text(text)


#: Every bad item of the folder and the reasons it is quarantined with.
EXPECTED_QUARANTINE = {
    "videos/corrupt.mp4": ["video does not decode"],
    "videos/empty.mp4": ["video does not decode"],
    "videos/truncated.mp4": ["video does not decode"],
    "not an image.jpg": ["image does not decode"],
    "huge.png": ["image too large"],
    "link out.jpg": ["media outside the folder"],
    "chat.jsonl:3": ["line is not JSON"],
    "chat.jsonl:4": ["line is not UTF-8"],
    "chat.jsonl:5": ["unknown JSONL keys"],
    "chat.jsonl:6": ["media file missing"],
    "chat.jsonl:7": ["media outside the folder"],
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The bad-input folder, and the items that must pass (by file, or ``file:line`` for JSONL)."""
    import skimage.data

    base = tmp_path_factory.mktemp("reliability")
    root, outside = base / "my data", base / "outside"
    (root / "videos").mkdir(parents=True)
    outside.mkdir()
    Image.fromarray(skimage.data.coffee()[::8, ::8]).save(root / "good photo.png")
    caption(root / "good photo.png", "A cup of coffee.")
    Image.fromarray(skimage.data.chelsea()[::8, ::8]).save(root / QUOTED)
    caption(root / QUOTED, "A cat.")
    Image.fromarray(skimage.data.rocket()[::8, ::8]).save(outside / "x.jpg")
    scene = collect_records(SourceSpec(name="scene-videos", limit=1, max_side_px=64), base / "work").records[0]
    video = Path(scene.media_path).read_bytes()
    (root / "clip ok.mp4").write_bytes(video)
    (root / "videos" / "corrupt.mp4").write_bytes(bytes(range(256)) * 40)
    (root / "videos" / "empty.mp4").write_bytes(b"")
    (root / "videos" / "truncated.mp4").write_bytes(video[:1500])
    (root / "not an image.jpg").write_text("just some text, not a JPEG")
    png_header(root / "huge.png", 30000, 30000)
    for name in (
        "clip ok.mp4",
        "videos/corrupt.mp4",
        "videos/empty.mp4",
        "videos/truncated.mp4",
        "not an image.jpg",
        "huge.png",
    ):
        caption(root / name, f"About {name}.")
    (root / "link out.jpg").symlink_to(outside / "x.jpg")
    (root / "chat.jsonl").write_bytes(
        b"\n".join(
            [
                json.dumps({"question": "What is 2+2?", "answer": "4"}).encode(),
                json.dumps(
                    {"question": "What is in the cup?", "answer": "Coffee.", "media": "good photo.png"}
                ).encode(),
                b'{"question": "broken", "answer": ',
                b'{"question": "\xff\xfe not UTF-8", "answer": "x"}',
                json.dumps({"question": "Where is the answer?"}).encode(),
                json.dumps({"question": "Which?", "answer": "gone", "media": "nothere.png"}).encode(),
                json.dumps({"question": "Which?", "answer": "theirs", "media": "../outside/x.jpg"}).encode(),
                json.dumps(
                    {
                        "image": QUOTED,
                        "conversations": [
                            {"from": "human", "value": "<image>\nWhat animal?"},
                            {"from": "gpt", "value": "A cat."},
                        ],
                    }
                ).encode(),
            ]
        )
        + b"\n"
    )
    good = {"good photo.png", QUOTED, "clip ok.mp4", "chat.jsonl:1", "chat.jsonl:2", "chat.jsonl:8"}
    return root, base, good


@pytest.fixture(scope="module")
def validated(folder):
    root, base, _ = folder
    collected = collect_records(SourceSpec(name="local-folder", root=str(root)), base / "work")
    quarantine = base / "quarantine.jsonl"
    report = validate_records(collected.records, quarantine_path=quarantine, rejected=collected.rejected)
    return report, [json.loads(line) for line in quarantine.read_text().splitlines()]


def item_of(record: dict) -> str:
    """A record's input: ``file:line`` for a JSONL line, else the media file's path in the folder."""
    return record["meta"].get("from") or record["meta"]["relative_path"]


def test_good_items_pass(folder, validated):
    _, _, good = folder
    report, _ = validated
    assert {item_of(json.loads(r.to_json())) for r in report.passed} == good


def test_every_bad_item_is_quarantined_with_a_reason_naming_it(folder, validated):
    root, _, _ = folder
    report, lines = validated
    found = {}
    for line in lines:
        item = item_of(line["record"]) if line["record"] else Path(line["id"]).relative_to(root).as_posix()
        found[item] = line["reasons"]
        media = line["record"] and line["record"]["media_path"]
        name = Path(media).name if media else item  # the file the problem is about, or the JSONL line
        assert any(name in problem["detail"] for problem in line["problems"]), line
    assert found == EXPECTED_QUARANTINE
    assert report.num_checked == len(report.passed) + report.num_quarantined  # nothing lost, nothing twice
