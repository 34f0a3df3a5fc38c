"""Validation: a corrupt image and a corrupt video are quarantined with their reasons; the rest is sharded."""

from __future__ import annotations

import json

import pytest
import webdataset as wds

from data_specs.mixes import DataMix
from data_specs.schemas import Record
from tasks.shards import ShardConfig, shard_stage
from tasks.sources import Rejected, SourceSpec, collect_records
from tasks.validate import validate_batch


@pytest.fixture(scope="session")
def gx():
    """Great Expectations, imported once per test session (it takes seconds)."""
    import great_expectations

    return great_expectations


@pytest.fixture(scope="module")
def batch(tmp_path_factory, gx):
    """Real records plus one of each kind of bad input, validated once."""
    work = tmp_path_factory.mktemp("validate")
    good = []
    for name, limit in (("easy-vqa", 4), ("skimage", 2), ("scene-videos", 2), ("text-instructions", 4)):
        good += collect_records(SourceSpec(name=name, limit=limit, max_side_px=64), work).records
    photo = next(r for r in good if r.source == "skimage")
    video = next(r for r in good if r.source == "scene-videos")
    broken_jpg = work / "broken.jpg"
    broken_jpg.write_bytes(open(photo.media_path, "rb").read()[:600])  # truncated mid-scan
    broken_mp4 = work / "broken.mp4"
    broken_mp4.write_bytes(open(video.media_path, "rb").read()[:1500])  # moov atom lost
    bad = [
        Record(
            id="bad-image",
            source="local-folder",
            modality="image",
            task="caption",
            question="",
            answer="A photo.",
            media_path=str(broken_jpg),
        ),
        Record(
            id="bad-video",
            source="local-folder",
            modality="video",
            task="caption",
            question="",
            answer="A clip.",
            media_path=str(broken_mp4),
        ),
        Record(
            id="bad-answer", source="local-folder", modality="text", task="instruction", question="Hi?", answer="  "
        ),
        Record(
            id="gone",
            source="local-folder",
            modality="image",
            task="caption",
            question="",
            answer="x",
            media_path=str(work / "missing.png"),
        ),
        good[0],  # a duplicate id
    ]
    rejected = [Rejected(source="local-folder", where="chat.jsonl:3", reason="JSONDecodeError: ...", raw="{not")]
    records = good[:5] + bad[:2] + good[5:] + bad[2:]
    quarantine = work / "quarantine.jsonl"
    report = validate_batch.fn(records, str(quarantine), rejected)
    lines = [json.loads(line) for line in quarantine.read_text().splitlines()]
    return good, report, lines, work


def test_good_records_pass_in_order(batch):
    good, report, _, _ = batch
    assert report.passed == good
    assert report.num_checked == len(good) + 5 + 1


def test_each_bad_input_is_quarantined_with_its_reason(batch):
    _, report, lines, _ = batch
    by_id = {line["id"]: line for line in lines}
    assert by_id["bad-image"]["reasons"] == ["image does not decode"]
    assert "truncated" in by_id["bad-image"]["problems"][0]["detail"].lower()
    assert by_id["bad-video"]["reasons"] == ["video does not decode"]
    assert "broken.mp4" in by_id["bad-video"]["problems"][0]["detail"]
    assert by_id["bad-answer"]["reasons"] == ["empty answer"]
    assert by_id["gone"]["reasons"] == ["media file missing"]
    assert by_id["chat.jsonl:3"]["reasons"] == ["not a valid record"] and by_id["chat.jsonl:3"]["raw"] == "{not"
    dup = [line for line in lines if line["reasons"] == ["duplicate id"]]
    assert len(dup) == 1 and Record(**dup[0]["record"]).id.startswith("easy-vqa")
    assert by_id["bad-image"]["record"]["media_path"].endswith("broken.jpg")  # the record is kept whole
    assert report.num_quarantined == len(lines) == 6
    assert report.reasons == {
        "duplicate id": 1,
        "empty answer": 1,
        "image does not decode": 1,
        "media file missing": 1,
        "not a valid record": 1,
        "video does not decode": 1,
    }


def test_the_rest_of_the_batch_is_sharded(batch):
    good, report, _, work = batch
    mix = DataMix(name="tiny", modality_ratios={"video": 0.24, "image": 0.5, "text": 0.26})
    result = shard_stage(
        report.passed,
        mix,
        ShardConfig(mix="tiny", out_dir=str(work / "shards"), slow_fast="tiny", max_records_per_shard=16),
    )
    seen = {s["json"]["id"] for s in wds.WebDataset([s.path for s in result.shards], shardshuffle=False).decode()}
    assert seen == {r.id for r in good}
    assert not seen & {"bad-image", "bad-video", "bad-answer", "gone"}


def png_header(path, width: int, height: int) -> None:
    """A PNG that declares ``width`` x ``height`` 1-bit pixels but holds one short row of data: any attempt to
    decode it fails, so a "too large" verdict proves the size was read from the header before decoding."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_an_oversized_image_is_refused_from_its_header(tmp_path):
    from tasks.validate import MAX_IMAGE_PIXELS, check_image

    huge, big, fine = tmp_path / "huge.png", tmp_path / "big.png", tmp_path / "fine.png"
    png_header(huge, 30000, 30000)  # past PIL's own bomb limit
    png_header(big, 9000, 9000)  # 81M pixels: under PIL's limit (89M), over ours
    png_header(fine, 64, 64)
    assert 9000 * 9000 > MAX_IMAGE_PIXELS
    for path, size in ((huge, "900000000 pixels"), (big, "9000x9000 pixels")):
        problem = check_image(str(path))
        assert problem.reason == "image too large", problem
        assert str(path) in problem.detail and size in problem.detail
    assert check_image(str(fine)).reason == "image does not decode"  # the same file shape, decoded: it fails


def test_rejected_inputs_are_counted_under_their_kind(tmp_path):
    quarantine = tmp_path / "q.jsonl"
    rejected = [
        Rejected(
            source="local-folder",
            where="/d/chat.jsonl:2",
            reason="Unusable: byte 3 is not UTF-8",
            raw="ab\\xff",
            kind="line is not UTF-8",
        ),
        Rejected(
            source="local-folder",
            where="/d/x.jpg",
            reason="Unusable: /d/x.jpg resolves to /e/x.jpg",
            raw="x.jpg",
            kind="media outside the folder",
        ),
    ]
    report = validate_batch.fn([], str(quarantine), rejected)
    assert report.reasons == {"line is not UTF-8": 1, "media outside the folder": 1}
    lines = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["/d/chat.jsonl:2", "/d/x.jpg"]
    assert lines[0]["problems"][0]["detail"] == "/d/chat.jsonl:2: Unusable: byte 3 is not UTF-8"


def test_a_suite_batch_keeps_the_first_of_a_repeated_id_and_quarantines_the_rest(tmp_path, gx):
    from data_specs.expectations import pair_row
    from tasks.validate import quarantine_failures
    from tests.data_specs.test_expectations import make_pair

    pairs = [make_pair(id="p1"), make_pair(id="p2"), make_pair(id="p1", chosen="<think>c</think>1")]
    quarantine = tmp_path / "pairs.quarantine.jsonl"
    report = quarantine_failures("pair", pairs, [pair_row(p) for p in pairs], quarantine_path=quarantine)
    assert report.passed == pairs[:2] and report.reasons == {"duplicate id": 1}  # GX alone would drop both p1
    (line,) = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert line["id"] == "p1" and line["kind"] == "pair" and line["record"]["chosen"] == "<think>c</think>1"
