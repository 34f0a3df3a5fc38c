"""Checkpoint evaluators with a tiny random model: the plumbing runs and the numbers are well formed."""

from __future__ import annotations

import json

import easy_vqa
import pytest

from tasks.evaluation.answering import EvalModel
from tasks.evaluation.run import (
    EvalConfig,
    TemporalSample,
    evaluate_checkpoint,
    evaluate_checkpoint_task,
    evaluate_temporal,
    evaluate_vqa,
    load_temporal_samples,
)


def test_greedy_answers_are_reproducible_and_text(eval_model):
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": easy_vqa.get_test_image_paths()[0]},
                {"type": "text", "text": "what shape is in the image?"},
            ],
        }
    ]
    first = eval_model.answer(conversation, max_new_tokens=5)
    assert isinstance(first, str) and "<|im_start|>" not in first  # the prompt is sliced off
    assert eval_model.answer(conversation, max_new_tokens=5) == first


def test_unreadable_media_names_the_sample(eval_model, tmp_path):
    conversation = [
        {
            "role": "user",
            "content": [{"type": "image", "image": str(tmp_path / "gone.png")}, {"type": "text", "text": "what?"}],
        }
    ]
    with pytest.raises(ValueError, match="sample q-7: .*gone.png"):
        eval_model.answer(conversation, sample_id="q-7")


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        EvalModel.load(tmp_path / "nope")


def test_evaluate_vqa_from_a_checkpoint_directory(checkpoint_dir):
    metrics = evaluate_vqa(checkpoint_dir, 3, seed=1, max_new_tokens=4)
    assert metrics["vqa/num_samples"] == 3.0
    assert 0.0 <= metrics["vqa/accuracy"] <= 1.0
    assert {"vqa/accuracy/yes_no", "vqa/accuracy/open"} & set(metrics)


@pytest.fixture
def temporal_samples(photo_video):
    """Two videos of photos with a hard cut; the "event" is the second photo's stretch."""
    first = photo_video("cut-a", ("astronaut", "coffee"), frames_per_photo=2)  # coffee from 1.0 s to 2.0 s
    second = photo_video("cut-b", ("rocket", "chelsea", "rocket"), frames_per_photo=1)  # chelsea 0.5-1.0 s
    return [
        TemporalSample(
            sample_id="cut-a", video_path=str(first), query="When is the coffee cup visible?", start_s=1.0, end_s=2.0
        ),
        TemporalSample(
            sample_id="cut-b", video_path=str(second), query="When is the cat visible?", start_s=0.5, end_s=1.0
        ),
    ]


def test_evaluate_temporal_runs_video_through_the_model(eval_model, temporal_samples):
    metrics = evaluate_temporal(eval_model, temporal_samples, max_new_tokens=4)
    assert metrics["temporal/num_samples"] == 2.0
    assert 0.0 <= metrics["temporal/mean_iou"] <= 1.0
    assert set(metrics) >= {"temporal/mae_start_s", "temporal/mae_center_s", "temporal/recall_at_0_3"}


def test_temporal_sample_errors_name_the_sample(eval_model, tmp_path):
    with pytest.raises(ValueError, match="temporal sample s1: need 0 <= start_s <= end_s"):
        TemporalSample(sample_id="s1", video_path="x.mp4", query="q", start_s=3.0, end_s=1.0)
    missing = TemporalSample(sample_id="s2", video_path=str(tmp_path / "x.mp4"), query="q", start_s=0, end_s=1)
    with pytest.raises(FileNotFoundError, match="temporal sample s2: video .*x.mp4"):
        evaluate_temporal(eval_model, [missing])


def test_load_temporal_samples_from_samples_and_curated_records(tmp_path):
    path = tmp_path / "temporal.jsonl"
    rows = [
        {"sample_id": "a", "video_path": "a.mp4", "query": "When?", "start_s": 1, "end_s": 2},
        {
            "id": "scene-videos-0-0001",
            "media_path": "b.mp4",
            "question": "When is a red square visible in the video?",
            "answer": "From 2.5 to 3.0 seconds.",
            "task": "temporal_localization",
        },
        {
            "id": "scene-videos-0-0002",
            "media_path": "c.mp4",
            "question": "At what time does the video cut?",
            "answer": "At 2.0 seconds.",
        },  # a point, not a span: skipped
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    samples = load_temporal_samples(path)
    assert [(s.sample_id, s.video_path, s.start_s, s.end_s) for s in samples] == [
        ("a", "a.mp4", 1.0, 2.0),
        ("scene-videos-0-0001", "b.mp4", 2.5, 3.0),
    ]


def test_eval_config_validates():
    with pytest.raises(ValueError, match="videomme_json and videomme_video_dir go together"):
        EvalConfig(videomme_json="v.json")
    with pytest.raises(ValueError, match="vqa_samples"):
        EvalConfig(vqa_samples=-1)


@pytest.mark.slow
def test_evaluate_checkpoint_runs_the_configured_set(checkpoint_dir, temporal_samples, tmp_path):
    temporal = tmp_path / "temporal.jsonl"
    temporal.write_text("\n".join(json.dumps(vars(s)) for s in temporal_samples[:1]) + "\n")
    questions = [
        {
            "video_id": "cut-a",
            "duration": "short",
            "domain": "Knowledge",
            "sub_category": "Photos",
            "question_id": "cut-a-1",
            "task_type": "Counting Problem",
            "question": "How many photos?",
            "options": ["A. 1", "B. 2", "C. 3", "D. 4"],
            "answer": "B",
        }
    ]
    videomme = tmp_path / "videomme.json"
    videomme.write_text(json.dumps(questions))
    config = EvalConfig(
        vqa_samples=2,
        temporal_jsonl=str(temporal),
        videomme_json=str(videomme),
        videomme_video_dir=str(tmp_path / "videos"),
        probe_set="photos",
        probe_shots=1,
        probe_test=1,
        max_new_tokens=3,
        video_preset="tiny",
    )
    metrics = evaluate_checkpoint_task.fn(checkpoint_dir, config)
    assert metrics["vqa/num_samples"] == 2.0 and metrics["temporal/num_samples"] == 1.0
    assert metrics["videomme/num_questions"] == 1.0 and metrics["probe/num_classes"] == 6.0
    assert all(isinstance(v, float) for v in metrics.values())
    only_probe = evaluate_checkpoint(checkpoint_dir, EvalConfig(vqa_samples=0, probe_shots=1, probe_test=1))
    assert set(only_probe) == {
        "probe/accuracy",
        "probe/chance",
        "probe/num_classes",
        "probe/num_shots",
        "probe/num_test",
        "probe/random_init_accuracy",
    }


def test_batched_answers_equal_one_at_a_time(eval_model):
    import easy_vqa

    from tasks.evaluation.answering import answer_all

    questions, _, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    picked = range(0, 70, 7)  # questions of different lengths: the batch is left-padded
    conversations = [
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": paths[image_ids[i]]}, {"type": "text", "text": questions[i]}],
            }
        ]
        for i in picked
    ]
    ids = [f"q{i}" for i in picked]
    one_by_one = [eval_model.answer(c, max_new_tokens=6, sample_id=i) for c, i in zip(conversations, ids)]
    assert answer_all(eval_model, conversations, ids, max_new_tokens=6, batch_size=4) == one_by_one
