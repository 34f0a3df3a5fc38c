"""easy-vqa: the package ships 64x64 shape images with templated questions and one-word answers.

Images are referenced where the package installed them (read-only, never copied); a record per question.
One in ``REASONING_EVERY`` picked questions also becomes a ``reasoning`` record whose answer is a short
chain of thought in the ``<think>`` format, built from the facts the data set knows about its image
(its shape and colour, read off the answers of all the image's questions). That is the SFT data that
teaches the model the format the LongCoT chain later samples from it. Worked example: image 7 is asked
"what color is the shape?" (red) and "what shape is this?" (triangle); for "is there a blue shape?" the
reasoning record answers "<think>\nThe image shows a red triangle.\nThe question: is there a blue
shape?\nSo the answer is no.\n</think>\n\nno".

Every image a picked question shows also gets ``CAPTIONS_PER_IMAGE`` ``caption`` records, e.g.
"Describe the image." -> "a red triangle". Every word of a caption needs the image, where a question's
wording alone answers most questions well (yes/no: 85% from the prior); without captions a small model
trained from scratch learns the priors and is slow to start reading the image (a plain loop, 600 steps:
71% with them mixed in at 30% of a batch vs 79%, open questions 38% vs 61%).
"""

from __future__ import annotations

import random
from pathlib import Path

from data_specs.schemas import Record
from keye_model.answers import join_thinking
from tasks.longcot import COT_INSTRUCTION
from tasks.sources.spec import Collected, SourceSpec

NAME = "easy-vqa"
SHAPES = ("circle", "rectangle", "triangle")
#: One in this many picked questions also gets a reasoning record.
REASONING_EVERY = 4
#: Caption records per image a picked question shows, each with another of ``CAPTION_PROMPTS``.
CAPTIONS_PER_IMAGE = 2
#: Ways of asking for a caption (the answer is always "a <colour> <shape>").
CAPTION_PROMPTS = (
    "Describe the image.",
    "What is in the picture?",
    "Describe the shape in the image.",
    "Write a short caption for this image.",
)


def collect(spec: SourceSpec, work_dir: Path) -> Collected:
    """Training questions picked by ``spec.seed`` (in question order), the reasoning records of one in
    ``REASONING_EVERY`` of them, then captions of their images; ``spec.limit`` records in all at most."""
    import easy_vqa

    texts, answers, image_ids = easy_vqa.get_train_questions()
    image_paths = easy_vqa.get_train_image_paths()
    answer_set = easy_vqa.get_answers()
    rng = random.Random(spec.seed)
    # Room for reasoning and captions inside the limit: per question 1/REASONING_EVERY reasoning records,
    # and about CAPTIONS_PER_IMAGE captions per 10 questions (easy-vqa asks ~9.6 questions an image).
    per_question = 1 + 1 / REASONING_EVERY + CAPTIONS_PER_IMAGE / 10
    num_questions = max(1, min(len(texts), int(spec.limit / per_question)))
    picked = sorted(rng.sample(range(len(texts)), num_questions))
    facts = image_facts(answers, image_ids)

    def record(record_id: str, task: str, question: str, answer: str, image_id: int) -> Record:
        return Record(
            id=f"{NAME}-train-{record_id}",
            source=NAME,
            modality="image",
            task=task,
            question=question,
            answer=answer,
            media_path=image_paths[image_id],
            meta={"split": "train", "image_id": image_id, "answer_set": answer_set},
        )

    records = [
        record(str(i), "counting" if texts[i].startswith("how many") else "vqa", texts[i], answers[i], image_ids[i])
        for i in picked
    ]
    for i in picked[::REASONING_EVERY]:
        reasoning = reasoning_answer(texts[i], answers[i], facts.get(image_ids[i], {}))
        if reasoning is not None:
            records.append(record(f"{i}-cot", "reasoning", f"{texts[i]}\n{COT_INSTRUCTION}", reasoning, image_ids[i]))
    for image_id in sorted({image_ids[i] for i in picked}):
        caption = image_caption(facts.get(image_id, {}))
        if caption is None:
            continue
        for n, prompt in enumerate(rng.sample(CAPTION_PROMPTS, CAPTIONS_PER_IMAGE)):
            records.append(record(f"image{image_id}-caption{n}", "caption", prompt, caption, image_id))
    return Collected(records=records[: spec.limit])


def image_facts(answers: list[str], image_ids: list[int]) -> dict[int, dict[str, str]]:
    """Per image id, its ``shape`` and ``color`` as the answers of its own questions state them."""
    facts: dict[int, dict[str, str]] = {}
    for answer, image_id in zip(answers, image_ids):
        if answer in ("yes", "no"):
            continue
        facts.setdefault(image_id, {})["shape" if answer in SHAPES else "color"] = answer
    return facts


def image_caption(facts: dict[str, str]) -> str | None:
    """ "a red triangle" from an image's facts; None without both its colour and its shape."""
    if "shape" not in facts or "color" not in facts:
        return None
    return f"a {facts['color']} {facts['shape']}"


def reasoning_answer(question: str, answer: str, facts: dict[str, str]) -> str | None:
    """A three-step chain from the image's facts to ``answer`` in the think format; None without both facts."""
    caption = image_caption(facts)
    if caption is None:
        return None
    steps = (
        f"The image shows {caption}.",
        f"The question: {question}",
        f"So the answer is {answer}.",
    )
    return join_thinking("\n".join(steps), answer)
