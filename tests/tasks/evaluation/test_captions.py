"""Held-out caption loss: test images only, the caption tokens scored, and it falls when the model learns."""

from __future__ import annotations

import copy

import easy_vqa
import torch

from tasks.evaluation.answering import EvalModel
from tasks.evaluation.captions import caption_loss, evaluate_captions, held_out_captions
from tasks.sources.easy_vqa import CAPTION_PROMPTS


def test_held_out_captions_are_test_images_with_their_own_facts():
    captions = held_out_captions(20, seed=3)
    assert len(captions) == 20 and captions == held_out_captions(20, seed=3)
    test_paths = set(easy_vqa.get_test_image_paths().values())
    train_paths = set(easy_vqa.get_train_image_paths().values())
    _, answers, image_ids = easy_vqa.get_test_questions()
    by_path = {easy_vqa.get_test_image_paths()[i]: i for i in set(image_ids)}
    for path, caption in captions:
        assert path in test_paths and path not in train_paths
        colour, shape = caption.removeprefix("a ").split()
        own = {a for a, i in zip(answers, image_ids) if i == by_path[path]}
        assert {colour, shape} <= own


def test_caption_loss_falls_when_the_model_learns_the_captions(eval_model):
    captions = held_out_captions(4, seed=0)
    model = copy.deepcopy(eval_model.model).train()
    learner = EvalModel(model=model, processor=eval_model.processor, checkpoint_dir="copy")
    before = caption_loss(learner, captions)
    conversations = [
        [
            {"role": "user", "content": [{"type": "image", "image": p}, {"type": "text", "text": CAPTION_PROMPTS[0]}]},
            {"role": "assistant", "content": c},
        ]
        for p, c in captions
    ]
    batch = eval_model.processor(conversations)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = caption_loss(learner, captions)
    assert before > 5.0 and after < 0.5 * before  # a random model is near ln(4096); trained, far below
    # the loss the model was trained on is the one measured (same tokens, same mean)
    assert abs(after - model(**batch).loss.item()) < 1e-4


def test_evaluate_captions_reports_with_and_without_the_image(eval_model):
    metrics = evaluate_captions(eval_model, 3, seed=1)
    assert metrics["caption/num_images"] == 3.0
    assert metrics["caption/loss"] > 0 and metrics["caption/loss_without_image"] > 0
