"""Video-MME loading (both public shapes), missing videos, prompt, scoring, and the model path end to end."""

from __future__ import annotations

import json

import pytest

from tasks.evaluation.run import evaluate_videomme
from tasks.evaluation.videomme import load_videomme, score_videomme, videomme_prompt

OPTIONS = ["A. one", "B. two", "C. three", "D. four"]


def flat_questions() -> list[dict]:
    """Three questions on two videos: "001" (file named by its videoID) and "002" (by video_id)."""
    base = {"domain": "Knowledge", "sub_category": "Photography", "options": OPTIONS}
    return [
        {
            **base,
            "video_id": "001",
            "videoID": "yt001abc",
            "duration": "short",
            "question_id": "001-1",
            "task_type": "Counting Problem",
            "question": "How many photographs are shown?",
            "answer": "B",
        },
        {
            **base,
            "video_id": "001",
            "videoID": "yt001abc",
            "duration": "short",
            "question_id": "001-2",
            "task_type": "Object Recognition",
            "question": "How many people appear?",
            "answer": "A",
        },
        {
            **base,
            "video_id": "002",
            "duration": "medium",
            "question_id": "002-1",
            "task_type": "Counting Problem",
            "question": "How many cuts are there?",
            "answer": "C",
        },
    ]


@pytest.fixture
def videomme_files(tmp_path, photo_video):
    photo_video("yt001abc", ("astronaut", "coffee"))
    photo_video("002", ("chelsea", "rocket", "coffee"), frames_per_photo=1)
    path = tmp_path / "videomme.json"
    path.write_text(json.dumps(flat_questions()))
    return path, tmp_path / "videos"


def test_load_flat_json_and_jsonl(videomme_files, tmp_path):
    path, video_dir = videomme_files
    items = load_videomme(path, video_dir)
    assert [i.question_id for i in items] == ["001-1", "001-2", "002-1"]
    assert items[0].video_path.endswith("yt001abc.mp4") and items[2].video_path.endswith("002.mp4")
    assert items[2].duration == "medium" and items[0].options == tuple(OPTIONS) and items[0].answer == "B"
    jsonl = tmp_path / "videomme.jsonl"
    jsonl.write_text("\n".join(json.dumps(q) for q in flat_questions()) + "\n")
    assert load_videomme(jsonl, video_dir) == items
    assert len(load_videomme(path, video_dir, limit=2)) == 2


def test_load_nested_github_shape(videomme_files, tmp_path):
    _, video_dir = videomme_files
    videos: dict[str, dict] = {}
    for q in flat_questions():
        video = videos.setdefault(
            q["video_id"],
            {k: q[k] for k in ("video_id", "duration", "domain", "sub_category")}
            | ({"videoID": q["videoID"]} if "videoID" in q else {})
            | {"questions": []},
        )
        video["questions"].append({k: q[k] for k in ("question_id", "task_type", "question", "options", "answer")})
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps(list(videos.values())))
    assert load_videomme(nested, video_dir) == load_videomme(videomme_files[0], video_dir)


def test_missing_video_and_bad_fields_are_named(videomme_files, tmp_path):
    path, video_dir = videomme_files
    (video_dir / "002.mp4").unlink()
    with pytest.raises(FileNotFoundError, match=r"question 002-1.*002\.mp4"):
        load_videomme(path, video_dir)
    broken = flat_questions()[:1]
    broken[0]["answer"] = "E"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="question 001-1: answer 'E'"):
        load_videomme(bad, video_dir)
    del broken[0]["task_type"]
    bad.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"001-1 lacks field\(s\) \['task_type'\]"):
        load_videomme(bad, video_dir)


def test_prompt_lists_question_and_options(videomme_files):
    item = load_videomme(*videomme_files)[0]
    prompt = videomme_prompt(item)
    assert "letter (A, B, C, or D)" in prompt
    assert prompt.endswith("How many photographs are shown?\nA. one\nB. two\nC. three\nD. four\nThe best answer is:")


def test_score_overall_and_breakdown(videomme_files):
    items = load_videomme(*videomme_files)
    # 001-1 right (B), 001-2 wrong (C, true A), 002-1 unparsable.
    scores = score_videomme(items, ["The answer is (B).", "C", "hmm"])
    assert scores["videomme/accuracy"] == pytest.approx(1 / 3)
    assert scores["videomme/num_unparsed"] == 1.0
    assert scores["videomme/duration/short"] == 0.5
    assert scores["videomme/duration/medium"] == 0.0
    assert scores["videomme/task_type/Counting Problem"] == 0.5
    assert scores["videomme/task_type/Object Recognition"] == 0.0
    assert list(scores)[3:5] == ["videomme/duration/short", "videomme/duration/medium"]  # benchmark order


@pytest.mark.slow
def test_evaluate_videomme_runs_the_model(videomme_files, eval_model):
    scores = evaluate_videomme(eval_model, *videomme_files, max_new_tokens=3)
    assert scores["videomme/num_questions"] == 3.0
    assert 0.0 <= scores["videomme/accuracy"] <= 1.0
    assert {"videomme/duration/short", "videomme/duration/medium"} <= set(scores)
