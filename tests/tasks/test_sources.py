"""Each source yields valid Records from real packaged data (easy-vqa, skimage photos, stdlib docs)."""

from __future__ import annotations

import inspect
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from data_specs.schemas import Record
from keye_model.video import decode_frames, probe_video
from tasks.sources import SourceSpec, collect_records, collect_source, source_names


def test_registry_finds_every_source_module():
    assert source_names() == ["easy-vqa", "local-folder", "scene-videos", "skimage", "text-instructions"]
    with pytest.raises(ValueError, match="unknown source 'nope'.*easy-vqa"):
        collect_records(SourceSpec(name="nope"), "/tmp")


def assert_valid(records: list[Record], source: str, modality: str) -> None:
    assert records
    assert len({r.id for r in records}) == len(records)
    for record in records:
        assert record.source == source and record.modality == modality
        assert record.answer.strip(), record
        assert Record.from_json(record.to_json()) == record


def test_easy_vqa_uses_packaged_images_and_questions(tmp_path):
    import easy_vqa

    records = collect_records(SourceSpec(name="easy-vqa", limit=6, seed=3), tmp_path).records
    assert_valid(records, "easy-vqa", "image")
    texts, answers, image_ids = easy_vqa.get_train_questions()
    for record in records:
        index = int(record.id.rsplit("-", 1)[1])
        assert (record.question, record.answer) == (texts[index], answers[index])
        assert record.answer in easy_vqa.get_answers()
        with Image.open(record.media_path) as image:
            assert image.size == (64, 64)
    again = collect_records(SourceSpec(name="easy-vqa", limit=6, seed=3), tmp_path).records
    assert again == records


def test_skimage_photos_are_real_photographs_with_docstring_captions(tmp_path):
    import skimage.data

    records = collect_records(SourceSpec(name="skimage", limit=4, max_side_px=96), tmp_path).records
    assert_valid(records, "skimage", "image")
    for record in records:
        photo = record.meta["photo"]
        assert record.answer == getattr(skimage.data, photo).__doc__.strip().splitlines()[0].strip()
        with Image.open(record.media_path) as image:
            assert max(image.size) <= 96 and image.format == "JPEG"
            assert np.asarray(image).std() > 10  # a photograph, not a blank canvas


def test_scene_videos_have_the_cuts_and_events_their_meta_records(tmp_path):
    records = collect_source.fn(SourceSpec(name="scene-videos", limit=2, seed=1, max_side_px=96), str(tmp_path)).records
    assert_valid(records, "scene-videos", "video")
    for record in records:
        meta = record.meta
        info = probe_video(record.media_path)
        assert (info.width, info.height) == (meta["width"], meta["height"])
        assert info.duration_s == pytest.approx(meta["duration_s"], abs=0.05)
        frames = decode_frames(record.media_path, fps=meta["fps"]).frames.astype(np.int16)
        assert len(frames) == meta["num_frames"]
        t, h, w, _ = frames.shape  # compare 8x8-pixel block means: a pan shifts pixels, a cut changes content
        blocks = frames[:, : h // 8 * 8, : w // 8 * 8].reshape(t, h // 8, 8, w // 8, 8, 3).mean(axis=(2, 4))
        change = np.abs(np.diff(blocks, axis=0)).mean(axis=(1, 2, 3))  # change[i]: frame i -> i+1
        cut_frames = {round(c * meta["fps"]) - 1 for c in meta["cuts_s"]}
        event = meta["events"][0]
        edges = {round(event["start_s"] * meta["fps"]) - 1, round(event["end_s"] * meta["fps"]) - 1}
        pans = [change[i] for i in range(len(change)) if i not in cut_frames | edges]
        assert min(change[i] for i in cut_frames) > 2 * max(pans)  # a hard cut, not a pan step
        first, last = round(event["start_s"] * meta["fps"]), round(event["end_s"] * meta["fps"])
        top, left, box_h, box_w = event["box_yxhw"]
        inner = frames[:, top + 2:top + box_h - 2, left + 2:left + box_w - 2].mean(axis=(1, 2))  # T x 3
        is_red = (np.abs(inner - (220, 20, 20)) < 30).all(axis=1)
        assert is_red.tolist() == [first <= i < last for i in range(len(frames))]
        assert "seconds" in record.answer


def test_text_instructions_answer_with_the_stdlib_docstrings(tmp_path):
    import importlib

    records = collect_records(SourceSpec(name="text-instructions", limit=8, seed=2), tmp_path).records
    assert_valid(records, "text-instructions", "text")
    for record in records:
        module, _, attr = record.meta["function"].rpartition(".")
        doc = inspect.getdoc(getattr(importlib.import_module(module), attr))
        assert record.answer == " ".join(doc.split("\n\n")[0].split())
        assert record.meta["function"] in record.question and record.media_path is None


def test_local_folder_reads_media_sidecars_and_jsonl(tmp_path):
    import skimage.data

    root = tmp_path / "mine"
    (root / "pics").mkdir(parents=True)
    Image.fromarray(skimage.data.coffee()[::8, ::8]).save(root / "pics" / "Cup 1.PNG")
    (root / "pics" / "Cup 1.txt").write_text("A cup of coffee on a saucer.\n")
    Image.fromarray(skimage.data.rocket()[::8, ::8]).save(root / "pics" / "rocket.jpg")
    (root / "pics" / "rocket.json").write_text(json.dumps(
        {"question": "What is launching?", "answer": "A rocket.", "task": "vqa", "meta": {"by": "me"}}))
    Image.fromarray(skimage.data.astronaut()[::8, ::8]).save(root / "pics" / "no-text.png")
    scene = collect_records(SourceSpec(name="scene-videos", limit=1, max_side_px=64), tmp_path / "work").records[0]
    shutil.copy(scene.media_path, root / "clip.mp4")
    (root / "clip.txt").write_text("Photos cut together.")
    (root / "chat.jsonl").write_text("\n".join([
        json.dumps({"id": "q1", "question": "What is 2+2?", "answer": "4"}),
        json.dumps({"question": "Which photo?", "answer": "The cup.", "media": "pics/Cup 1.PNG"}),
        "{not json",
        json.dumps({"question": "no answer field"}),
    ]) + "\n")
    collected = collect_records(SourceSpec(name="local-folder", root=str(root), limit=50), tmp_path / "work")
    by_path = {r.meta.get("relative_path", r.meta.get("from")): r for r in collected.records}
    assert by_path["pics/Cup 1.PNG"].answer == "A cup of coffee on a saucer."
    assert by_path["pics/rocket.jpg"].question == "What is launching?" and by_path["pics/rocket.jpg"].task == "vqa"
    assert by_path["pics/no-text.png"].answer == ""  # left for validation to quarantine, not dropped
    assert by_path["clip.mp4"].modality == "video"
    text = [r for r in collected.records if r.modality == "text"]
    assert len(text) == 1 and text[0].answer == "4"
    assert {r.meta.get("from") for r in collected.records} >= {"chat.jsonl:2"}
    assert sorted(r.where.rsplit(":", 1)[1] for r in collected.rejected) == ["3", "4"]
    assert all(r.source == "local-folder" and r.reason for r in collected.rejected)
    again = collect_records(SourceSpec(name="local-folder", root=str(root), limit=50), tmp_path / "work")
    assert [r.id for r in again.records] == [r.id for r in collected.records]
    assert len({r.id for r in collected.records}) == len(collected.records) == 6
