"""Each source yields valid Records from real packaged data (easy-vqa, skimage photos, stdlib docs)."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

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
    assert len(records) <= 6
    texts, answers, image_ids = easy_vqa.get_train_questions()
    for record in [r for r in records if r.task not in ("reasoning", "caption")]:
        index = int(record.id.rsplit("-", 1)[1])
        assert (record.question, record.answer) == (texts[index], answers[index])
        assert record.answer in easy_vqa.get_answers()
        with Image.open(record.media_path) as image:
            assert image.size == (64, 64)
    again = collect_records(SourceSpec(name="easy-vqa", limit=6, seed=3), tmp_path).records
    assert again == records


def test_easy_vqa_reasoning_records_chain_the_images_facts_to_the_answer(tmp_path):
    import easy_vqa

    from keye_model.answers import split_thinking

    records = collect_records(SourceSpec(name="easy-vqa", limit=200, seed=1), tmp_path).records
    reasoning = [r for r in records if r.task == "reasoning"]
    assert 10 <= len(reasoning) <= 40 and len(records) <= 200  # images whose shape or colour no question names get none
    texts, answers, image_ids = easy_vqa.get_train_questions()
    for record in reasoning:
        index = int(record.id.split("-")[3])
        thinking, answer = split_thinking(record.answer)
        assert answer == answers[index] and texts[index] in record.question
        colour, shape = thinking.splitlines()[0].removeprefix("The image shows a ").rstrip(".").split()
        own = {a for a, i in zip(answers, image_ids) if i == image_ids[index]}
        assert {colour, shape} <= own  # the facts come from the image's own questions


def test_easy_vqa_captions_name_the_images_own_colour_and_shape(tmp_path):
    import easy_vqa

    from tasks.sources.easy_vqa import CAPTION_PROMPTS, CAPTIONS_PER_IMAGE

    records = collect_records(SourceSpec(name="easy-vqa", limit=300, seed=2), tmp_path).records
    captions = [r for r in records if r.task == "caption"]
    questions = [r for r in records if r.task in ("vqa", "counting")]
    assert captions and len(records) <= 300
    _, answers, image_ids = easy_vqa.get_train_questions()
    for record in captions:
        image_id = record.meta["image_id"]
        colour, shape = record.answer.removeprefix("a ").split()
        own = {a for a, i in zip(answers, image_ids) if i == image_id}
        assert {colour, shape} <= own and record.question in CAPTION_PROMPTS
        assert record.media_path == easy_vqa.get_train_image_paths()[image_id]
    # captions only of images the picked questions show, at most CAPTIONS_PER_IMAGE each, prompts differing
    shown = {r.meta["image_id"] for r in questions}
    per_image: dict[int, set[str]] = {}
    for record in captions:
        per_image.setdefault(record.meta["image_id"], set()).add(record.question)
    assert set(per_image) <= shown
    assert all(
        len(prompts) == sum(r.meta["image_id"] == i for r in captions) <= CAPTIONS_PER_IMAGE
        for i, prompts in per_image.items()
    )


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
        inner = frames[:, top + 2 : top + box_h - 2, left + 2 : left + box_w - 2].mean(axis=(1, 2))  # T x 3
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
    (root / "pics" / "rocket.json").write_text(
        json.dumps({"question": "What is launching?", "answer": "A rocket.", "task": "vqa", "meta": {"by": "me"}})
    )
    Image.fromarray(skimage.data.astronaut()[::8, ::8]).save(root / "pics" / "no-text.png")
    scene = collect_records(SourceSpec(name="scene-videos", limit=1, max_side_px=64), tmp_path / "work").records[0]
    shutil.copy(scene.media_path, root / "clip.mp4")
    (root / "clip.txt").write_text("Photos cut together.")
    (root / "chat.jsonl").write_text(
        "\n".join(
            [
                json.dumps({"id": "q1", "question": "What is 2+2?", "answer": "4"}),
                json.dumps({"question": "Which photo?", "answer": "The cup.", "media": "pics/Cup 1.PNG"}),
                "{not json",
                json.dumps({"question": "no answer field"}),
            ]
        )
        + "\n"
    )
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


def photo(path, name: str = "coffee") -> None:
    import skimage.data

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(getattr(skimage.data, name)()[::16, ::16]).save(path)


def by_where(collected) -> dict[str, object]:
    """Rejected inputs by ``<file name>[:<line>]``."""
    return {r.where.rsplit("/", 1)[-1]: r for r in collected.rejected}


def test_local_folder_quarantines_a_non_utf8_line_and_reads_the_rest(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "chat.jsonl").write_bytes(
        b"\n".join(
            [
                json.dumps({"question": "First?", "answer": "one"}).encode(),
                b'{"question": "caf\xe9 latin-1", "answer": "x"}',  # Latin-1, not UTF-8
                json.dumps({"question": "Third?", "answer": "three"}).encode(),
            ]
        )
        + b"\n"
    )
    (root / "cup.png").parent.mkdir(exist_ok=True)
    photo(root / "cup.png")
    (root / "cup.txt").write_bytes(b"A cup \xff")  # a sidecar that is not UTF-8: its item only
    collected = collect_records(SourceSpec(name="local-folder", root=str(root)), tmp_path / "work")
    assert [r.answer for r in collected.records] == ["one", "three"]
    bad = by_where(collected)
    assert set(bad) == {"chat.jsonl:2", "cup.png"}
    assert bad["chat.jsonl:2"].kind == "line is not UTF-8" and "byte 17" in bad["chat.jsonl:2"].reason
    assert bad["chat.jsonl:2"].raw == '{"question": "caf\\xe9 latin-1", "answer": "x"}'
    assert bad["cup.png"].kind == "sidecar is not UTF-8" and "cup.txt" in bad["cup.png"].reason


def test_local_folder_media_must_resolve_inside_the_folder(tmp_path):
    root, outside = tmp_path / "mine", tmp_path / "elsewhere"
    photo(outside / "x.jpg")
    (outside / "secret.txt").write_text("the neighbour's caption")
    (outside / "theirs.jsonl").write_text(json.dumps({"question": "Q?", "answer": "theirs"}) + "\n")
    photo(root / "ok.png")
    (root / "ok.txt").write_text("Mine.")
    (root / "link-out.jpg").symlink_to(outside / "x.jpg")
    (root / "link-in.png").symlink_to(root / "ok.png")  # a symlink that stays inside is fine
    (root / "link-in.txt").write_text("Mine too.")
    photo(root / "stolen-caption.png")
    (root / "stolen-caption.txt").symlink_to(outside / "secret.txt")
    (root / "linked.jsonl").symlink_to(outside / "theirs.jsonl")
    (root / "chat.jsonl").write_text(
        "\n".join(
            json.dumps(line)
            for line in [
                {"question": "Which?", "answer": "ok", "media": "ok.png"},
                {"question": "Which?", "answer": "up", "media": "../elsewhere/x.jpg"},
                {"question": "Which?", "answer": "abs", "media": str(outside / "x.jpg")},
                {"question": "Which?", "answer": "llava", "image": "sub/../../elsewhere/x.jpg"},
            ]
        )
        + "\n"
    )
    collected = collect_records(SourceSpec(name="local-folder", root=str(root)), tmp_path / "work")
    assert sorted(r.answer for r in collected.records) == ["Mine too.", "Mine.", "ok"]
    for record in collected.records:
        assert Path(record.media_path).resolve().is_relative_to(root.resolve())
    bad = by_where(collected)
    assert set(bad) == {
        "chat.jsonl:2",
        "chat.jsonl:3",
        "chat.jsonl:4",
        "link-out.jpg",
        "stolen-caption.png",
        "linked.jsonl",
    }
    for item in bad.values():
        assert item.kind == "media outside the folder", item
        assert "outside the source folder" in item.reason and str(outside) in item.reason
    assert "theirs" not in json.dumps([r.raw for r in collected.rejected])  # the outside file was never read
    assert "neighbour" not in json.dumps([r.raw for r in collected.rejected])


def test_local_folder_is_read_whole_unless_its_own_limit_is_set(tmp_path, caplog):
    root = tmp_path / "mine"
    for i in range(3):
        photo(root / f"p{i}.png")
        (root / f"p{i}.txt").write_text(f"photo {i}")
    (root / "text.jsonl").write_text(
        "".join(json.dumps({"question": f"{i}?", "answer": str(i)}) + "\n" for i in range(10))
    )
    whole = collect_records(SourceSpec(name="local-folder", root=str(root), limit=4), tmp_path / "work")
    assert len(whole.records) == 13 and whole.num_dropped == 0  # ``limit`` (--records-per-source) is not ours
    with caplog.at_level("WARNING"):
        some = collect_records(SourceSpec(name="local-folder", root=str(root), folder_limit=4), tmp_path / "work")
    assert [r.answer for r in some.records] == ["photo 0", "photo 1", "photo 2", "0"]
    assert some.num_dropped == 9
    assert "folder_limit=4 reached, 9 items" in caplog.text
    with pytest.raises(ValueError, match="folder_limit must be >= 1"):
        SourceSpec(name="local-folder", root=str(root), folder_limit=0)


def test_local_folder_accepts_llava_lines_and_names_the_keys_to_use(tmp_path):
    root = tmp_path / "mine"
    photo(root / "imgs" / "cat.jpg", "chelsea")
    scene = collect_records(SourceSpec(name="scene-videos", limit=1, max_side_px=64), tmp_path / "work").records[0]
    shutil.copy(scene.media_path, root / "clip.mp4")
    human, gpt = "human", "gpt"
    (root / "llava.jsonl").write_text(
        "\n".join(
            json.dumps(line)
            for line in [
                {
                    "id": "000123",
                    "image": "imgs/cat.jpg",
                    "conversations": [
                        {"from": human, "value": "<image>\nWhat animal is this?"},
                        {"from": gpt, "value": "A cat."},
                    ],
                },
                {
                    "id": "v1",
                    "video": "clip.mp4",
                    "conversations": [
                        {"from": human, "value": "What happens?\n<video>"},
                        {"from": gpt, "value": "Photos cut together."},
                        {"from": human, "value": "How many cuts?"},
                        {"from": gpt, "value": "Two."},
                    ],
                },
                {
                    "image": ["imgs/cat.jpg"],
                    "conversations": [
                        {"from": "user", "value": "<image> Colour?"},
                        {"from": "assistant", "value": "Brown."},
                    ],
                },
                {"conversations": [{"from": human, "value": "Say hi."}, {"from": gpt, "value": "Hi."}]},
                {"prompt": "Q?", "response": "A."},
                {"media": "imgs/cat.jpg", "image": "imgs/cat.jpg", "answer": "A cat."},
                {"image": "imgs/cat.jpg", "conversations": [{"from": gpt, "value": "A cat."}]},
                {"conversations": [{"from": human, "value": "<image>\nWhat?"}, {"from": gpt, "value": "A cat."}]},
                {
                    "image": "clip.mp4",
                    "conversations": [{"from": human, "value": "What?"}, {"from": gpt, "value": "x"}],
                },
                {
                    "image": ["imgs/cat.jpg", "imgs/cat.jpg"],
                    "conversations": [{"from": human, "value": "Same?"}, {"from": gpt, "value": "Yes."}],
                },
            ]
        )
        + "\n"
    )
    collected = collect_records(SourceSpec(name="local-folder", root=str(root)), tmp_path / "work")
    got = {(r.meta["from"], r.meta.get("turn")): r for r in collected.records if "from" in r.meta}
    assert sorted(got) == [
        ("llava.jsonl:1", None),
        ("llava.jsonl:2", 1),
        ("llava.jsonl:2", 2),
        ("llava.jsonl:3", None),
        ("llava.jsonl:4", None),
    ]
    cat = got["llava.jsonl:1", None]
    assert (cat.modality, cat.task, cat.question, cat.answer) == ("image", "vqa", "What animal is this?", "A cat.")
    assert cat.media_path == str(root / "imgs" / "cat.jpg")
    first, second = got["llava.jsonl:2", 1], got["llava.jsonl:2", 2]
    assert (first.modality, first.question, second.question, second.answer) == (
        "video",
        "What happens?",
        "How many cuts?",
        "Two.",
    )
    assert first.id != second.id and first.media_path == second.media_path
    assert got["llava.jsonl:3", None].question == "Colour?"
    assert got["llava.jsonl:4", None].modality == "text"
    bad = by_where(collected)
    assert set(bad) == {f"llava.jsonl:{n}" for n in range(5, 11)}
    assert bad["llava.jsonl:5"].kind == "unknown JSONL keys"
    assert "['prompt', 'response']" in bad["llava.jsonl:5"].reason
    assert "'answer'" in bad["llava.jsonl:5"].reason and "'conversations'" in bad["llava.jsonl:5"].reason
    assert bad["llava.jsonl:6"].kind == "ambiguous media" and "['media', 'image']" in bad["llava.jsonl:6"].reason
    assert "starting with a human" in bad["llava.jsonl:7"].reason
    assert "names no media" in bad["llava.jsonl:8"].reason
    assert "has a video suffix; use 'media' or 'video'" in bad["llava.jsonl:9"].reason
    assert "one media file per line" in bad["llava.jsonl:10"].reason
