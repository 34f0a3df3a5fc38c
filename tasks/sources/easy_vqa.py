"""easy-vqa: the package ships 64x64 shape images with templated questions and one-word answers.

Images are referenced where the package installed them (read-only, never copied); a record per question.
"""

from __future__ import annotations

import random
from pathlib import Path

from data_specs.schemas import Record
from tasks.sources.spec import Collected, SourceSpec

NAME = "easy-vqa"


def collect(spec: SourceSpec, work_dir: Path) -> Collected:
    """``spec.limit`` training questions picked by ``spec.seed``, in question order."""
    import easy_vqa

    texts, answers, image_ids = easy_vqa.get_train_questions()
    image_paths = easy_vqa.get_train_image_paths()
    answer_set = easy_vqa.get_answers()
    picked = sorted(random.Random(spec.seed).sample(range(len(texts)), min(spec.limit, len(texts))))
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
    return Collected(records=records)
