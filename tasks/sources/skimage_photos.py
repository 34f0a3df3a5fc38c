"""skimage: the photographs scikit-image ships (astronaut, coffee, rocket...), captioned by their docstrings.

Each photo is loaded from the package, shrunk to ``spec.max_side_px`` and saved as a JPEG in the work
dir; the caption is the first line of the loader's docstring ("Coffee cup.").
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

from data_specs.schemas import Record
from tasks.sources.spec import Collected, SourceSpec

NAME = "skimage"
#: Photographs (not synthetic test patterns) that ship inside the scikit-image wheel, no download.
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
PROMPTS = ("Describe this image.", "What does this picture show?", "Write a short caption for this photo.")


def caption(name: str) -> str:
    """First line of the skimage loader's docstring, e.g. ``"Coffee cup."``."""
    import skimage.data

    return getattr(skimage.data, name).__doc__.strip().splitlines()[0].strip()


def load_photo(name: str, max_side_px: int) -> np.ndarray:
    """The photo as uint8 RGB, HxWx3, longest side at most ``max_side_px`` (antialiased)."""
    import skimage.data

    image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    image.thumbnail((max_side_px, max_side_px), Image.Resampling.LANCZOS)
    return np.asarray(image)


def collect(spec: SourceSpec, work_dir: Path) -> Collected:
    """Up to ``spec.limit`` photos (one record each), order and prompts picked by ``spec.seed``."""
    rng = random.Random(spec.seed)
    names = rng.sample(PHOTOS, min(spec.limit, len(PHOTOS)))
    records = []
    for name in names:
        pixels = load_photo(name, spec.max_side_px)
        path = work_dir / f"{name}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        records.append(
            Record(
                id=f"{NAME}-{name.replace('_', '-')}",
                source=NAME,
                modality="image",
                task="caption",
                question=rng.choice(PROMPTS),
                answer=caption(name),
                media_path=str(path),
                meta={"photo": name, "height": int(pixels.shape[0]), "width": int(pixels.shape[1])},
            )
        )
    return Collected(records=records)
