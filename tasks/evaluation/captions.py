"""Caption loss on held-out images: does the model describe an image it never saw?

The easy-vqa TEST images (never in a training mix) with their known colour and shape give reference
captions ("a red triangle", as the training captions of ``tasks.sources.easy_vqa`` say them); the metric
is the mean cross-entropy per caption token given the image and a caption prompt (``caption/loss``), and
the same with the image left out (``caption/loss_without_image``): the gap is what the image tells the
model. Stage 1 trains the projector only, so this is the number it must lower.
"""

from __future__ import annotations

import random

import torch

from keye_model.losses import IGNORE_INDEX
from tasks.evaluation.answering import EvalModel
from tasks.sources.easy_vqa import CAPTION_PROMPTS, image_caption, image_facts

#: Conversations per forward pass.
BATCH = 64


def held_out_captions(num_images: int, seed: int = 0) -> list[tuple[str, str]]:
    """(image path, caption) of ``num_images`` easy-vqa test images whose colour and shape are known."""
    import easy_vqa

    _, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    captions = {i: c for i, f in image_facts(answers, image_ids).items() if (c := image_caption(f)) is not None}
    picked = sorted(random.Random(seed).sample(sorted(captions), min(num_images, len(captions))))
    return [(paths[i], captions[i]) for i in picked]


@torch.no_grad()
def caption_loss(evaluator: EvalModel, captions: list[tuple[str, str]], *, with_image: bool = True) -> float:
    """Mean cross-entropy per caption token (its closing ``<|im_end|>`` included) over ``captions``."""
    model, processor = evaluator.model, evaluator.processor
    total, tokens = 0.0, 0
    for start in range(0, len(captions), BATCH):
        conversations = []
        for path, caption in captions[start : start + BATCH]:
            prompt = [{"type": "text", "text": CAPTION_PROMPTS[0]}]
            media = [{"type": "image", "image": path}] if with_image else []
            conversations.append(
                [{"role": "user", "content": media + prompt}, {"role": "assistant", "content": caption}]
            )
        batch = {
            k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in processor(conversations).items()
        }
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        total += losses.item()
        tokens += int((labels != IGNORE_INDEX).sum())
    return total / max(tokens, 1)


def evaluate_captions(evaluator: EvalModel, num_images: int, *, seed: int = 0) -> dict[str, float]:
    """``caption/loss`` and ``caption/loss_without_image`` on ``num_images`` held-out test images."""
    captions = held_out_captions(num_images, seed)
    if not captions:
        raise ValueError("no easy-vqa test image has both a known colour and shape to caption")
    return {
        "caption/loss": caption_loss(evaluator, captions),
        "caption/loss_without_image": caption_loss(evaluator, captions, with_image=False),
        "caption/num_images": float(len(captions)),
    }
