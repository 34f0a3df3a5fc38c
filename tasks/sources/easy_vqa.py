"""easy-vqa: the package ships 64x64 shape images with templated questions and one-word answers.

Images are referenced where the package installed them (read-only, never copied); a record per question.
One in ``REASONING_EVERY`` picked questions also becomes a ``reasoning`` record whose answer is a short
chain of thought in the ``<think>`` format, built from the facts the data set knows about its image
(its shape and colour, read off the answers of all the image's questions). That is the SFT data that
teaches the model the format the LongCoT chain later samples from it. Worked example: image 7 is asked
"what color is the shape?" (red) and "what shape is this?" (triangle); for "is there a blue shape?" the
reasoning record answers "<think>\nThe image shows a red triangle.\nThe question: is there a blue
shape?\nSo the answer is no.\n</think>\n\nno".
"""

from __future__ import annotations

import random
from pathlib import Path

from data_specs.schemas import Record
from keye_model.special_tokens import THINK_END, THINK_START
from tasks.longcot import COT_INSTRUCTION
from tasks.sources.spec import Collected, SourceSpec

NAME = "easy-vqa"
SHAPES = ("circle", "rectangle", "triangle")
#: One in this many picked questions also gets a reasoning record.
REASONING_EVERY = 4


def collect(spec: SourceSpec, work_dir: Path) -> Collected:
    """Training questions picked by ``spec.seed`` (in question order), then the reasoning records of one
    in ``REASONING_EVERY`` of them; ``spec.limit`` records in all at most."""
    import easy_vqa

    texts, answers, image_ids = easy_vqa.get_train_questions()
    image_paths = easy_vqa.get_train_image_paths()
    answer_set = easy_vqa.get_answers()
    # Room for the reasoning records inside the limit: 4 questions + 1 reasoning record per 5 records.
    num_questions = max(1, spec.limit * REASONING_EVERY // (REASONING_EVERY + 1))
    picked = sorted(random.Random(spec.seed).sample(range(len(texts)), min(num_questions, len(texts))))
    facts = image_facts(answers, image_ids)
    records = [
        Record(
            id=f"{NAME}-train-{index}",
            source=NAME,
            modality="image",
            task="counting" if texts[index].startswith("how many") else "vqa",
            question=texts[index],
            answer=answers[index],
            media_path=image_paths[image_ids[index]],
            meta={"split": "train", "image_id": image_ids[index], "answer_set": answer_set},
        )
        for index in picked
    ]
    for index in picked[::REASONING_EVERY]:
        reasoning = reasoning_answer(texts[index], answers[index], facts.get(image_ids[index], {}))
        if reasoning is not None:
            records.append(
                Record(
                    id=f"{NAME}-train-{index}-cot",
                    source=NAME,
                    modality="image",
                    task="reasoning",
                    question=f"{texts[index]}\n{COT_INSTRUCTION}",
                    answer=reasoning,
                    media_path=image_paths[image_ids[index]],
                    meta={"split": "train", "image_id": image_ids[index], "answer_set": answer_set},
                )
            )
    return Collected(records=records[: spec.limit])


def image_facts(answers: list[str], image_ids: list[int]) -> dict[int, dict[str, str]]:
    """Per image id, its ``shape`` and ``color`` as the answers of its own questions state them."""
    facts: dict[int, dict[str, str]] = {}
    for answer, image_id in zip(answers, image_ids):
        if answer in ("yes", "no"):
            continue
        facts.setdefault(image_id, {})["shape" if answer in SHAPES else "color"] = answer
    return facts


def reasoning_answer(question: str, answer: str, facts: dict[str, str]) -> str | None:
    """A three-step chain from the image's facts to ``answer`` in the think format; None without both facts."""
    if "shape" not in facts or "color" not in facts:
        return None
    steps = (
        f"The image shows a {facts['color']} {facts['shape']}.",
        f"The question: {question}",
        f"So the answer is {answer}.",
    )
    return f"{THINK_START}\n" + "\n".join(steps) + f"\n{THINK_END}\n\n{answer}"
